//go:build unix

package mqtt

import "syscall"

const rawReadSupported = true

// rawReadFD is read(2) on a non-blocking socket, retried on EINTR.
func rawReadFD(fd uintptr, p []byte) (int, error) {
	for {
		n, err := syscall.Read(int(fd), p)
		if err != syscall.EINTR {
			return n, err
		}
	}
}
