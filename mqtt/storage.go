package mqtt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/hooks/storage/bolt"
	"github.com/mochi-mqtt/server/v2/packets"
	"go.etcd.io/bbolt"
)

// storageHook is mochi's bolt storage hook with writes limited to what a restart needs:
//   - in-flight messages and subscriptions only of persistent sessions (MQTT 5 session expiry > 0,
//     MQTT 3 clean session off); stock mochi writes (and deletes) every QoS 1/2 message of every
//     client, two bolt transactions per message even for clean sessions;
//   - never the broker's own PUBACK for an inbound QoS 1 message (it lives for microseconds).
//
// Durability: with sync off (the default), bolt skips fsync at commit, so a commit is in the
// OS page cache when the hook returns — it survives kill -9 of the broker, not a power loss.
// With sync on, every commit is fsynced. Shutdown fsyncs the file in both cases.
type storageHook struct {
	*bolt.Hook
	path  string
	fsync bool
}

func openStorage(dir string, sync bool) (*storageHook, error) {
	if err := ensureDir(dir); err != nil {
		return nil, err
	}
	return &storageHook{Hook: new(bolt.Hook), path: storageFile(dir), fsync: sync}, nil
}

func (h *storageHook) config() *bolt.Options {
	return &bolt.Options{
		Path:   h.path,
		Bucket: "sluice",
		Options: &bbolt.Options{
			Timeout:    2 * time.Second, // another process holding the file
			NoSync:     !h.fsync,
			NoGrowSync: !h.fsync, // growing the file fsyncs otherwise, seconds under disk contention
			// The freelist is rebuilt by a scan at open instead of being written at every commit:
			// one page less per commit on the QoS 1 path.
			NoFreelistSync: true,
			FreelistType:   bbolt.FreelistMapType,
		},
	}
}

// StoredSysInfo is bolt's, except that a store without $SYS info (a fresh one) is not an error:
// mochi would log it at error level on every first start.
func (h *storageHook) StoredSysInfo() (storage.SystemInfo, error) {
	v, err := h.Hook.StoredSysInfo()
	if errors.Is(err, bolt.ErrKeyNotFound) {
		return storage.SystemInfo{}, nil
	}
	return v, err
}

// SetOpts gives bolt a logger on which its "failed to get data" for a missing key (bolt logs it
// before StoredSysInfo can tell it is expected) is a debug line, not an error.
func (h *storageHook) SetOpts(l *slog.Logger, o *mochi.HookOptions) {
	h.Hook.SetOpts(slog.New(notFoundQuiet{l.Handler()}), o)
}

// notFoundQuiet lowers records carrying a bolt.ErrKeyNotFound error to debug level.
type notFoundQuiet struct{ slog.Handler }

func (q notFoundQuiet) Handle(ctx context.Context, r slog.Record) error {
	if r.Level > slog.LevelDebug {
		r.Attrs(func(a slog.Attr) bool {
			if err, ok := a.Value.Any().(error); ok && errors.Is(err, bolt.ErrKeyNotFound) {
				r.Level = slog.LevelDebug
				return false
			}
			return true
		})
		if r.Level == slog.LevelDebug && !q.Handler.Enabled(ctx, r.Level) {
			return nil
		}
	}
	return q.Handler.Handle(ctx, r)
}

func (q notFoundQuiet) WithAttrs(as []slog.Attr) slog.Handler {
	return notFoundQuiet{q.Handler.WithAttrs(as)}
}
func (q notFoundQuiet) WithGroup(name string) slog.Handler {
	return notFoundQuiet{q.Handler.WithGroup(name)}
}

func persistent(cl *mochi.Client) bool {
	if cl.Properties.ProtocolVersion >= 5 {
		return cl.Properties.Props.SessionExpiryInterval > 0
	}
	return !cl.Properties.Clean
}

// serverAck reports whether pk is the PUBACK mochi builds for an inbound QoS 1 PUBLISH (built
// with a creation time; a client's PUBACK decoded off the wire has none).
func serverAck(pk packets.Packet) bool {
	return pk.FixedHeader.Type == packets.Puback && pk.Created != 0
}

func (h *storageHook) OnQosPublish(cl *mochi.Client, pk packets.Packet, sent int64, resends int) {
	if !persistent(cl) || serverAck(pk) {
		return
	}
	h.Hook.OnQosPublish(cl, pk, sent, resends)
}

func (h *storageHook) OnQosComplete(cl *mochi.Client, pk packets.Packet) {
	if !persistent(cl) || serverAck(pk) {
		return
	}
	h.Hook.OnQosComplete(cl, pk)
}

func (h *storageHook) OnQosDropped(cl *mochi.Client, pk packets.Packet) {
	if !persistent(cl) {
		return
	}
	h.Hook.OnQosDropped(cl, pk)
}

func (h *storageHook) OnSubscribed(cl *mochi.Client, pk packets.Packet, reasonCodes []byte) {
	if !persistent(cl) {
		return
	}
	h.Hook.OnSubscribed(cl, pk, reasonCodes)
}

// StoredInflightMessages restores the packet id that mochi's bolt hook does not save (its
// storage.Message has no PacketID set, so every restored in-flight message of a client would get id
// 0 and all but one would be lost); the id is the last ':'-separated field of the storage key.
func (h *storageHook) StoredInflightMessages() ([]storage.Message, error) {
	msgs, err := h.Hook.StoredInflightMessages()
	for i := range msgs {
		if msgs[i].PacketID != 0 {
			continue
		}
		if j := strings.LastIndexByte(msgs[i].ID, ':'); j >= 0 {
			if id, perr := strconv.ParseUint(msgs[i].ID[j+1:], 10, 16); perr == nil {
				msgs[i].PacketID = uint16(id)
			}
		}
	}
	return msgs, err
}

// syncFile fsyncs the database file after the hook closed it.
func (h *storageHook) syncFile() error {
	f, err := os.OpenFile(h.path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("mqtt: sync storage: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("mqtt: sync storage: %w", err)
	}
	return nil
}
