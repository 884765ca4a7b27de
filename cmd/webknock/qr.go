package main

// This file draws QR codes in the terminal, for enrolling a totp key in an
// authenticator app.

import (
	"fmt"
	"image"
	"image/color"
	"strings"

	"github.com/boombuler/barcode/qr"
)

// qrQuiet is the light margin around a QR code, in modules, that the
// standard asks for: without it scanners may not find the code.
const qrQuiet = 4

// qrText returns the QR code of text drawn with Unicode half blocks.
func qrText(text string) (string, error) {
	bc, err := qr.Encode(text, qr.M, qr.Auto)
	if err != nil {
		return "", fmt.Errorf("qr code: %w", err)
	}
	return renderQR(bc), nil
}

// renderQR draws the modules of a QR code, two rows per line of text. Light
// modules and the quiet zone are the blocks (the terminal's foreground),
// dark modules are spaces: in a dark terminal the code shows dark on light,
// as scanners expect.
func renderQR(img image.Image) string {
	b := img.Bounds()
	w, h := b.Dx()+2*qrQuiet, b.Dy()+2*qrQuiet
	light := func(x, y int) bool {
		p := image.Pt(b.Min.X+x-qrQuiet, b.Min.Y+y-qrQuiet)
		if y >= h {
			return false // below the code: the terminal's background
		}
		if !p.In(b) {
			return true
		}
		return color.GrayModel.Convert(img.At(p.X, p.Y)).(color.Gray).Y >= 0x80
	}
	var sb strings.Builder
	for y := 0; y < h; y += 2 {
		for x := range w {
			switch top, bottom := light(x, y), light(x, y+1); {
			case top && bottom:
				sb.WriteString("█")
			case top:
				sb.WriteString("▀")
			case bottom:
				sb.WriteString("▄")
			default:
				sb.WriteByte(' ')
			}
		}
		sb.WriteByte('\n')
	}
	return sb.String()
}
