package loadtest

import (
	"errors"

	"github.com/sluicemq/sluice/devices"
)

var (
	// ErrLost is matched by the error RunAll's callers report when messages were lost.
	ErrLost = errors.New("loadtest: messages were lost")
	// ErrConfig is matched by every scenario error; it is devices.ErrConfig, whose *ConfigError
	// carries file and line.
	ErrConfig = devices.ErrConfig
)
