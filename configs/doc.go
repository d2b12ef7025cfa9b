// Package configs holds Sluice's configuration: the YAML file format, its embedded default
// (sluice.yaml, which is also the reference of every key) and the loader.
//
// Decoding is strict and positions are kept: an unknown key, a key given twice, a value of the wrong
// kind or a bad duration is an *Error whose message is one line, "FILE:LINE: what is wrong". A file is
// decoded onto the embedded default, so every key has a default; a list or a mapping of names that the
// file sets replaces the default one whole. Validate then checks the values together (listener names and
// addresses unique, TLS files present, topic filters valid, bcrypt hashes, queue names, bridge rules) and
// names the line of the key at fault.
//
// The package imports nothing of Sluice's: cmd/sluice turns a *Config into each component's Options.
// A *Config is a plain value: safe to read from several goroutines, not to change concurrently.
//
//	cfg, err := configs.Load("sluice.yaml")
//	if err == nil {
//		err = cfg.Validate()
//	}
//	if err != nil {
//		fmt.Fprintln(os.Stderr, err) // sluice.yaml:12: unknown key "adress" in section mqtt.listeners[0] (did you mean "address"?)
//		os.Exit(2)
//	}
package configs
