package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/sluicemq/sluice/bridge"
	"github.com/sluicemq/sluice/configs"
	"github.com/sluicemq/sluice/queue"
)

// withUplinkRules returns a copy of cfg whose Bridge.Rules also hold the rules of the uplinks that name
// topic filters instead of a queue (filter → queue uplink.<name>), so that startQueues creates those
// queues and routes into them. cfg itself is left as it was read (Reload compares it with the file).
func withUplinkRules(cfg *configs.Config) *configs.Config {
	c := *cfg
	c.Bridge.Rules = append(slices.Clone(cfg.Bridge.Rules), cfg.UplinkRules()...)
	return &c
}

// startUplinks starts one store-and-forward uplink per entry of cfg.Uplinks, each draining its queue of
// qm to its upstream broker. Call it once the queues are open and the MQTT listeners started (a
// downlink publishes through the local tcp listener). mux, when not nil, gets GET /v1/uplinks (the
// uplinks' status as JSON). reg may be nil.
//
// stop closes the uplinks (publishes in flight get until ctx ends to be confirmed). Call it after the
// MQTT listeners stopped and before the queues close.
func startUplinks(ctx context.Context, cfg *configs.Config, qm *queue.Manager, mux *http.ServeMux, reg prometheus.Registerer, log zerolog.Logger) (stop func(context.Context) error, err error) {
	if err := cfg.ValidateUplinks(); err != nil {
		return nil, err
	}
	if len(cfg.Uplinks) == 0 {
		return func(context.Context) error { return nil }, nil
	}
	host, _ := os.Hostname()
	var (
		ups     []*bridge.Uplink
		locals  []*bridge.LocalClient
		stopped bool
		mu      sync.Mutex
	)
	stop = func(ctx context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return nil
		}
		stopped = true
		errs := make([]error, len(ups))
		var wg sync.WaitGroup
		for i, u := range ups {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := u.Close(ctx); err != nil && !errors.Is(err, bridge.ErrUplinkClosed) {
					errs[i] = err
				}
			}()
		}
		wg.Wait()
		for _, l := range locals {
			_ = l.Close()
		}
		return errors.Join(errs...)
	}
	defer func() {
		if err != nil {
			_ = stop(ctx)
			stop = nil
		}
	}()
	for i, c := range cfg.Uplinks {
		o, local, err := uplinkOptions(cfg, c, host, reg, log)
		if local != nil {
			locals = append(locals, local)
		}
		if err != nil {
			return nil, fmt.Errorf("uplinks[%d] (%s): %w", i, c.Name, err)
		}
		u, err := bridge.NewUplink(qm, o)
		if err != nil {
			return nil, err
		}
		ups = append(ups, u)
	}
	for _, u := range ups {
		if err := u.Start(); err != nil {
			return nil, err
		}
	}
	if mux != nil {
		mux.HandleFunc("GET /v1/uplinks", func(w http.ResponseWriter, _ *http.Request) {
			out := struct {
				Uplinks []bridge.UplinkStatus `json:"uplinks"`
			}{Uplinks: make([]bridge.UplinkStatus, 0, len(ups))}
			for _, u := range ups {
				out.Uplinks = append(out.Uplinks, u.Status())
			}
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(out)
		})
	}
	log.Info().Int("uplinks", len(ups)).Msg("uplinks started")
	return stop, nil
}

// uplinkOptions converts one configured uplink. The LocalClient of its downlink, if any, is returned for
// closing even when err is not nil.
func uplinkOptions(cfg *configs.Config, c configs.Uplink, host string, reg prometheus.Registerer, log zerolog.Logger) (bridge.UplinkOptions, *bridge.LocalClient, error) {
	password := c.Password
	if c.PasswordFile != "" {
		b, err := os.ReadFile(c.PasswordFile)
		if err != nil {
			return bridge.UplinkOptions{}, nil, fmt.Errorf("read password_file: %w", err)
		}
		password = strings.TrimRight(string(b), "\r\n")
	}
	gateway := c.Gateway
	if gateway == "" {
		gateway = host
	}
	o := bridge.UplinkOptions{
		Name:            c.Name,
		URL:             c.URL,
		ProtocolVersion: c.ProtocolVersion,
		ClientID:        c.ClientID,
		Username:        c.Username,
		Password:        password,
		TLS: bridge.UplinkTLS{
			CAFile:             c.TLS.CAFile,
			CertFile:           c.TLS.CertFile,
			KeyFile:            c.TLS.KeyFile,
			ServerName:         c.TLS.ServerName,
			InsecureSkipVerify: c.TLS.InsecureSkipVerify,
		},
		Queue:       c.QueueName(),
		Gateway:     gateway,
		Topic:       bridge.TopicRewrite{StripPrefix: c.Topic.StripPrefix, Template: c.Topic.Template},
		QoS:         byte(c.QoS),
		MaxInFlight: c.MaxInFlight,
		Batch:       c.Batch,
		Rate:        c.Rate,
		Burst:       c.Burst,
		KeepAlive:   c.KeepAlive,
		Timeout:     c.Timeout,
		Backoff:     bridge.ReconnectBackoff{Initial: c.Reconnect.Initial, Max: c.Reconnect.Max, Jitter: c.Reconnect.Jitter},
		Lease:       c.Lease,
		Logger:      log,
		Registerer:  reg,
	}
	if d := c.Downlink; d != nil {
		lc, err := bridge.NewLocalClient(bridge.LocalClientOptions{
			URL:      d.LocalURLFor(cfg),
			ClientID: "sluice-downlink-" + c.Name,
			Username: d.LocalUsername,
			Password: d.LocalPassword,
		})
		if err != nil {
			return o, nil, fmt.Errorf("downlink: %w", err)
		}
		o.Downlink = &bridge.Downlink{
			Filters:   d.Filters,
			QoS:       byte(d.SubQoS()),
			Topic:     bridge.TopicRewrite{StripPrefix: d.Topic.StripPrefix, Template: d.Topic.Template},
			Publisher: lc,
		}
		return o, lc, nil
	}
	return o, nil, nil
}
