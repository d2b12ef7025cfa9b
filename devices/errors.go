package devices

import (
	"errors"
	"fmt"
)

var (
	// ErrClosed is returned by operations on a Client or Fleet that was closed or has finished.
	ErrClosed = errors.New("devices: closed")
	// ErrConnectionLost is returned for a publish whose acknowledgement can no longer arrive
	// because the network connection was lost first.
	ErrConnectionLost = errors.New("devices: connection lost")
	// ErrConfig is matched (errors.Is) by every *ConfigError.
	ErrConfig = errors.New("devices: invalid configuration")
	// ErrRefused is matched by a *ConnectError whose broker answered CONNECT with a failure
	// (bad credentials, not authorized, ...), as opposed to a network failure.
	ErrRefused = errors.New("devices: connection refused by broker")
)

// ConfigError is a problem in a fleet file or fleet options. File and Line are set when the
// problem is located in a YAML file (Line is 1-based); both are zero for flag or API input.
type ConfigError struct {
	File string
	Line int
	Msg  string

	field string // dotted YAML key the problem is about, to find its line
}

func (e *ConfigError) Error() string {
	switch {
	case e.File != "" && e.Line > 0:
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	case e.File != "":
		return fmt.Sprintf("%s: %s", e.File, e.Msg)
	default:
		return e.Msg
	}
}

// Is makes errors.Is(err, ErrConfig) true for every ConfigError.
func (e *ConfigError) Is(target error) bool { return target == ErrConfig }

// ConnectError is a failed attempt to connect one client to a broker.
type ConnectError struct {
	Broker  string
	Refused bool // the broker answered CONNACK with a failure code
	Err     error
}

func (e *ConnectError) Error() string {
	if e.Refused {
		return fmt.Sprintf("broker %s refused the connection: %v", e.Broker, e.Err)
	}
	return fmt.Sprintf("cannot connect to broker %s: %v", e.Broker, e.Err)
}

func (e *ConnectError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrRefused) true for a refused connection.
func (e *ConnectError) Is(target error) bool { return target == ErrRefused && e.Refused }
