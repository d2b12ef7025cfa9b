package loadtest

import "github.com/sluicemq/sluice/devices"

// ErrConfig is matched (errors.Is) by every scenario error; it is devices.ErrConfig, whose
// *devices.ConfigError carries the file and line. Lost messages are not an error of Run: see
// Result.Lost, Result.OK and Report.Lost.
var ErrConfig = devices.ErrConfig
