//go:build !unix

package mqtt

import "errors"

// Elsewhere connections read through net.Conn into mochi's small bufio.Reader.
const rawReadSupported = false

func rawReadFD(uintptr, []byte) (int, error) { return 0, errors.ErrUnsupported }
