//go:build !unix

package mqtt

import "errors"

// Elsewhere every connection reads through a bufio.Reader (inbound.br), as TLS ones do.
const rawReadSupported = false

func rawReadFD(uintptr, []byte) (int, error) { return 0, errors.ErrUnsupported }
