package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/sluicemq/sluice/bridge"
	"github.com/sluicemq/sluice/configs"
	"github.com/sluicemq/sluice/mqtt"
	"github.com/sluicemq/sluice/queue"
	"github.com/sluicemq/sluice/queue/httpapi"
)

// startQueues opens the queues under cfg.DataDir/queues (the declared ones and those the bridge rules
// name), adds the bridge hook to srv (call it before srv.Start), and mounts the queue HTTP API on mux
// (nil: no API). reg may be nil (no metrics).
//
// The returned stop ends pending long polls, drains the bridge's QoS 0 buffers and closes the queues.
// Call it after srv.Shutdown (no publish may arrive after the bridge closed); the HTTP server may be
// shut down before or after it (API calls after stop answer 503).
func startQueues(ctx context.Context, cfg *configs.Config, srv *mqtt.Server, mux *http.ServeMux, reg prometheus.Registerer, log zerolog.Logger) (qm *queue.Manager, stop func(context.Context) error, err error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	rules := make([]bridge.Rule, len(cfg.Bridge.Rules))
	for i, r := range cfg.Bridge.Rules {
		if r.MinQoS < 0 || r.MinQoS > 2 {
			return nil, nil, fmt.Errorf("bridge rule %d: min_qos %d is not 0, 1 or 2", i+1, r.MinQoS)
		}
		rules[i] = bridge.Rule{Filter: r.Filter, Queue: r.Queue, MinQoS: byte(r.MinQoS)}
	}
	if err := bridge.ValidateRules(rules); err != nil {
		return nil, nil, err
	}
	keys, err := apiKeys(cfg.HTTP.APIKeys)
	if err != nil {
		return nil, nil, err
	}

	opts := queue.Options{
		Defaults:   queueConfig(cfg.Queues.Defaults),
		Queues:     make(map[string]queue.Config),
		Logger:     log,
		Registerer: reg,
	}
	for name, s := range cfg.Queues.Declare {
		opts.Queues[name] = queueConfig(s)
	}
	for _, r := range rules {
		if _, ok := opts.Queues[r.Queue]; !ok {
			opts.Queues[r.Queue] = queue.Config{} // the defaults
		}
	}
	m, err := queue.Open(filepath.Join(cfg.DataDir, "queues"), opts)
	if err != nil {
		return nil, nil, fmt.Errorf("open queues: %w", err)
	}
	bopts := bridge.Options{Rules: rules, Logger: log, Registerer: reg}
	// Pipelined acks: the bridge gates each bridged QoS 1 publish's PUBACK on its connection until the
	// record is durable (srv.GateAck), so one busy connection shares group commits instead of
	// waiting for one per message.
	bopts.Pipeline = srv
	b, err := bridge.New(m, bopts)
	if err != nil {
		return nil, nil, errors.Join(err, m.Close())
	}
	if err := srv.AddHook(b.Hook(), nil); err != nil {
		return nil, nil, errors.Join(fmt.Errorf("add bridge hook: %w", err), b.Close(ctx), m.Close())
	}
	var api *httpapi.Handler
	if mux != nil {
		api, err = httpapi.New(m, httpapi.Options{Keys: keys, Logger: log, Registerer: reg})
		if err != nil {
			return nil, nil, errors.Join(err, b.Close(ctx), m.Close())
		}
		api.Register(mux)
	}
	log.Info().Str("component", "queues").Int("rules", len(rules)).Strs("queues", m.Queues()).Int("api_keys", len(keys)).
		Bool("pipelined_acks", bopts.Pipeline != nil).Msg("queues started")
	return m, func(ctx context.Context) error {
		if api != nil {
			api.Close()
		}
		berr := b.Close(ctx)
		if errors.Is(berr, bridge.ErrClosed) {
			berr = nil
		}
		merr := m.Close()
		if errors.Is(merr, queue.ErrClosed) {
			merr = nil
		}
		return errors.Join(berr, merr)
	}, nil
}

// queueConfig converts a configs.QueueSettings into the queue package's Config (zero stays zero: the default).
func queueConfig(s configs.QueueSettings) queue.Config {
	return queue.Config{
		VisibilityTimeout: s.VisibilityTimeout,
		MaxAttempts:       s.MaxAttempts,
		Backoff: queue.Backoff{
			Initial:    s.Backoff.Initial,
			Multiplier: s.Backoff.Multiplier,
			Max:        s.Backoff.Max,
			Jitter:     s.Backoff.Jitter,
		},
		MaxMessages:    s.MaxMessages,
		MaxBytes:       s.MaxBytes,
		MaxAge:         s.MaxAge,
		Overflow:       s.Overflow,
		Sync:           s.Sync,
		DeadLetter:     s.DeadLetter,
		OnExpire:       s.OnExpire,
		MaxMessageSize: s.MaxMessageSize,
	}
}

// apiKeys converts the configured API keys for the HTTP API.
func apiKeys(cks []configs.APIKey) ([]httpapi.Key, error) {
	keys := make([]httpapi.Key, 0, len(cks))
	for i, ck := range cks {
		k := httpapi.Key{Name: ck.Name, Queues: make(map[string]httpapi.Rights, len(ck.Queues))}
		switch {
		case ck.KeyHash != "" && ck.Key != "":
			return nil, fmt.Errorf("http.api_keys[%d] (%s): give key or key_hash, not both", i, ck.Name)
		case ck.KeyHash != "":
			h, err := httpapi.ParseHash(ck.KeyHash)
			if err != nil {
				return nil, fmt.Errorf("http.api_keys[%d] (%s): %w", i, ck.Name, err)
			}
			k.SHA256 = h
		case ck.Key != "":
			k.SHA256 = httpapi.HashToken(ck.Key)
		default:
			return nil, fmt.Errorf("http.api_keys[%d] (%s): key or key_hash is required", i, ck.Name)
		}
		for q, names := range ck.Queues {
			r, err := httpapi.ParseRights(names)
			if err != nil {
				return nil, fmt.Errorf("http.api_keys[%d] (%s), queue %q: %w", i, ck.Name, q, err)
			}
			k.Queues[q] = r
		}
		keys = append(keys, k)
	}
	return keys, nil
}
