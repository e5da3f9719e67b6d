package hostile_test

import "testing"

func TestLoop(t *testing.T) {
	n := 0
	for {
		n++
	}
}
