package main

import (
	"image"
	"image/color"
	"strings"
	"testing"

	"github.com/boombuler/barcode/qr"
)

// readQR reads renderQR's text back into modules (true: light), checking
// that every line has the same width.
func readQR(t *testing.T, text string) [][]bool {
	t.Helper()
	var rows [][]bool
	for line := range strings.Lines(text) {
		line = strings.TrimSuffix(line, "\n")
		var top, bottom []bool
		for _, r := range line {
			switch r {
			case '█':
				top, bottom = append(top, true), append(bottom, true)
			case '▀':
				top, bottom = append(top, true), append(bottom, false)
			case '▄':
				top, bottom = append(top, false), append(bottom, true)
			case ' ':
				top, bottom = append(top, false), append(bottom, false)
			default:
				t.Fatalf("character %q in the QR code", r)
			}
		}
		if len(rows) > 0 && len(top) != len(rows[0]) {
			t.Fatalf("line of %d modules after lines of %d", len(top), len(rows[0]))
		}
		rows = append(rows, top, bottom)
	}
	return rows
}

// TestRenderQR: the drawing holds exactly the barcode's modules, light as
// blocks, inside a light quiet zone of 4 modules.
func TestRenderQR(t *testing.T) {
	uri := "otpauth://totp/webknock:alice?algorithm=SHA1&digits=6&issuer=webknock&period=30&secret=AAAQEAYEAUDAOCAJBIFQYDIOB4IBCEQTCQKRMFYYDENBWHA5DYPQ"
	bc, err := qr.Encode(uri, qr.M, qr.Auto)
	if err != nil {
		t.Fatal(err)
	}
	text, err := qrText(uri)
	if err != nil {
		t.Fatal(err)
	}
	if text != renderQR(bc) {
		t.Fatal("qrText differs from renderQR of the same barcode")
	}
	n := bc.Bounds().Dx()
	if n < 21 || (n-21)%4 != 0 || bc.Bounds().Dy() != n {
		t.Fatalf("barcode of %v: not a QR code's size", bc.Bounds())
	}
	size := n + 2*qrQuiet
	rows := readQR(t, text)
	if lines := strings.Count(text, "\n"); lines != (size+1)/2 || len(rows[0]) != size {
		t.Fatalf("%d lines of %d modules, want %d lines of %d (%d modules and the quiet zone)", lines, len(rows[0]), (size+1)/2, size, n)
	}
	for y := range rows {
		for x := range rows[y] {
			var want bool
			switch {
			case y >= size:
				want = false // the half line below the code
			case x < qrQuiet || y < qrQuiet || x >= n+qrQuiet || y >= n+qrQuiet:
				want = true
			default:
				want = bc.At(x-qrQuiet, y-qrQuiet) == color.White
			}
			if rows[y][x] != want {
				t.Fatalf("module (%d,%d) light=%v, want %v", x, y, rows[y][x], want)
			}
		}
	}
	// The finder pattern's dark ring at the top left.
	if rows[qrQuiet][qrQuiet] || rows[qrQuiet+1][qrQuiet+1] == rows[qrQuiet][qrQuiet] {
		t.Error("no finder pattern at the top left")
	}
}

// TestRenderQROrientation draws an asymmetric image: columns are x and rows
// are y, not the other way round.
func TestRenderQROrientation(t *testing.T) {
	img := image.NewGray(image.Rect(0, 0, 3, 2))
	for i := range img.Pix {
		img.Pix[i] = 0xff
	}
	img.SetGray(2, 0, color.Gray{}) // dark: right of the top row
	img.SetGray(0, 1, color.Gray{Y: 0x40})
	rows := readQR(t, renderQR(img))
	if len(rows) != 2+2*qrQuiet || len(rows[0]) != 3+2*qrQuiet {
		t.Fatalf("%d×%d modules, want %d×%d", len(rows[0]), len(rows), 3+2*qrQuiet, 2+2*qrQuiet)
	}
	for y := range 2 {
		for x := range 3 {
			dark := x == 2 && y == 0 || x == 0 && y == 1
			if rows[y+qrQuiet][x+qrQuiet] == dark {
				t.Errorf("module (%d,%d) light=%v, want %v", x, y, !dark, dark)
			}
		}
	}
}
