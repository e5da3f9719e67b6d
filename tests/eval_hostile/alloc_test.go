package hostile_test

import "testing"

func TestAlloc(t *testing.T) {
	b := make([]byte, 10<<30)
	for i := 0; i < len(b); i += 4096 {
		b[i] = 1
	}
}
