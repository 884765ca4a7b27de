"use strict";
// The webknock helper page: computes the URLs of one sequence for the
// current time step, as DESIGN.md's "One-time sequences" defines them, and
// requests them in order. The fragment (never sent to a server) may hold
// "knock" to knock as soon as the page opens (a bookmark that knocks in one
// tap), "at=UNIXSECONDS" to compute for another time and "dry" to compute
// only.
(() => {
  const W = JSON.parse(document.getElementById("wk-data").textContent);
  const $ = (id) => document.getElementById(id);
  const frag = new URLSearchParams(location.hash.slice(1));
  const dry = frag.has("dry");
  const auto = frag.has("knock");
  const atText = frag.get("at");
  const enc = new TextEncoder();
  let key = null; // the sequence's key, once known

  function status(state, text) {
    const s = $("status");
    s.dataset.state = state;
    s.textContent = text;
  }

  function utc(d) {
    return d.toISOString().replace(/\.\d{3}Z$/, "Z");
  }

  function tick() {
    $("clock").textContent = utc(new Date());
  }

  function fromBase64(s) {
    return Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  }

  function base64url(bytes) {
    let s = "";
    for (const b of bytes) s += String.fromCharCode(b);
    return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function concat(...parts) {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let i = 0;
    for (const p of parts) {
      out.set(p, i);
      i += p.length;
    }
    return out;
  }

  async function hmac(hash, k, msg) {
    const ck = await crypto.subtle.importKey("raw", k, { name: "HMAC", hash }, false, ["sign"]);
    return new Uint8Array(await crypto.subtle.sign("HMAC", ck, msg));
  }

  // token is token(i) of time step t: the first 22 characters of
  // base64url(HMAC-SHA256(K, "webknock/v1" 0 name 0 decimal(i) 0 decimal(t))).
  async function token(k, i, t) {
    const z = Uint8Array.of(0);
    const msg = concat(enc.encode("webknock/v1"), z, enc.encode(W.name), z, enc.encode(String(i)), z, enc.encode(String(t)));
    return base64url(await hmac("SHA-256", k, msg)).slice(0, 22);
  }

  // code is the 6-digit RFC 6238 code of time step t (HMAC-SHA1, RFC 4226
  // dynamic truncation), what an authenticator app shows.
  async function code(k, t) {
    const counter = new Uint8Array(8);
    const v = new DataView(counter.buffer);
    v.setUint32(0, Math.floor(t / 2 ** 32));
    v.setUint32(4, t % 2 ** 32);
    const h = await hmac("SHA-1", k, counter);
    const o = h[19] & 0xf;
    const bin = ((h[o] & 0x7f) << 24) | (h[o + 1] << 16) | (h[o + 2] << 8) | h[o + 3];
    return String(bin % 1000000).padStart(6, "0");
  }

  async function paths(k, t) {
    switch (W.mode) {
      case "static":
        return W.paths.slice();
      case "totp":
        return W.paths.concat(W.prefix + (await code(k, t)));
    }
    const out = [];
    for (let i = 1; i <= W.steps + 1; i++) out.push(W.prefix + (await token(k, i, t)));
    return out;
  }

  function hex(bytes) {
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function sequenceKey() {
    if (key) return key;
    if (!W.salt) return (key = fromBase64(W.key));
    const pass = $("pass").value;
    if (!pass) throw new Error("type the passphrase first.");
    status("busy", "Making the key from the passphrase…");
    const pk = await crypto.subtle.importKey("raw", enc.encode(pass), "PBKDF2", false, ["deriveBits"]);
    const params = { name: "PBKDF2", hash: "SHA-256", salt: fromBase64(W.salt), iterations: W.iterations };
    const k = new Uint8Array(await crypto.subtle.deriveBits(params, pk, 256));
    const check = hex((await hmac("SHA-256", k, enc.encode("webknock/v1 check"))).slice(0, 2));
    if (check !== W.check) throw new Error("wrong passphrase: it does not make this sequence's key. Check it and try again.");
    return (key = k);
  }

  function when() {
    if (atText === null) return Date.now() / 1000;
    if (!/^-?\d+$/.test(atText)) throw new Error("#at= wants Unix seconds.");
    return Number(atText);
  }

  function timeout() {
    return AbortSignal.timeout ? AbortSignal.timeout(20000) : undefined;
  }

  async function knock() {
    $("go").disabled = true;
    try {
      const at = when();
      let t = 0;
      let k = null;
      if (W.mode !== "static") {
        k = await sequenceKey();
        t = Math.floor(at / W.period);
        $("step").textContent = String(t);
        $("until").textContent = utc(new Date((t + 1) * W.period * 1000));
      }
      const urls = (await paths(k, t)).map((p) => W.base + p);
      $("urls").replaceChildren(
        ...urls.map((u) => {
          const li = document.createElement("li");
          li.textContent = u;
          return li;
        }),
      );
      if (dry) {
        $("details").open = true;
        status("dry", "Computed for " + utc(new Date(at * 1000)) + "; nothing requested (#dry).");
        return;
      }
      for (const [i, u] of urls.entries()) {
        status("busy", `Requesting ${i + 1} of ${urls.length}…`);
        try {
          await fetch(u, { mode: "no-cors", cache: "no-store", credentials: "omit", signal: timeout() });
        } catch (e) {
          throw new Error(`request ${i + 1} of ${urls.length} failed (${e.message}). Is ${W.base} reachable from here?`);
        }
      }
      status("done", `Done: requested all ${urls.length} URLs at ${utc(new Date())}. The ports open in a few seconds if the server saw them in time.`);
    } catch (e) {
      status("failed", "Failed: " + e.message);
    } finally {
      $("go").disabled = false;
    }
  }

  tick();
  setInterval(tick, 1000);
  if (W.mode !== "static" && !(window.isSecureContext && window.crypto && crypto.subtle)) {
    // Browsers offer WebCrypto only to secure contexts.
    status("failed", "This page must be opened from a file or over https: the browser computes the URLs only there, not on a plain http page.");
    $("go").disabled = true;
    return;
  }
  $("form").addEventListener("submit", (e) => {
    e.preventDefault();
    knock();
  });
  status("idle", dry ? "Dry run (#dry): Knock computes the URLs and requests nothing." : W.salt ? "Type the passphrase and press Knock." : "Press Knock.");
  if ((dry || auto) && !W.salt) knock();
})();
