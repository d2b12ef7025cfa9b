package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/sluicemq/sluice/queue"
	"github.com/sluicemq/sluice/queue/api"
)

// Manager is what the handler needs of the queues: *queue.Manager is one.
type Manager interface {
	Queues() []string
	Stats(q string) (queue.Stats, error)
	Enqueue(ctx context.Context, q string, msgs []queue.Message) ([]string, error)
	Receive(ctx context.Context, q string, max int, lease time.Duration) ([]queue.Delivery, error)
	Ack(q string, receipts []string) ([]error, error)
	Nack(q string, receipts []string, delay time.Duration) ([]error, error)
	Extend(q string, receipts []string, lease time.Duration) ([]error, error)
	PeekDead(q string, max int) ([]queue.DeadLetter, error)
	Redrive(ctx context.Context, q string, ids []string) (int, error)
	Purge(ctx context.Context, q string) (int, error)
}

// Options configure a Handler. The zero value is valid: no keys (every request allowed; listen on
// loopback only), default body limits, no metrics.
type Options struct {
	// Keys are the API keys; once there is one, every request needs a valid key with the right rights.
	Keys []Key
	// MaxBodyBytes limits an enqueue request's body; 0 → 16 MiB. Other bodies are limited to 1 MiB.
	MaxBodyBytes int64
	Logger       zerolog.Logger
	Registerer   prometheus.Registerer // nil → no metrics
}

// Handler serves the queue API under /v1/queues. It is safe for concurrent use.
type Handler struct {
	m       Manager
	keys    []Key
	maxBody int64
	log     zerolog.Logger
	mux     *http.ServeMux

	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec

	// ctx ends pending long polls at Close.
	ctx       context.Context
	cancel    context.CancelFunc
	closeOnce sync.Once
}

// New builds a Handler over m.
func New(m Manager, opts Options) (*Handler, error) {
	if m == nil {
		return nil, errors.New("httpapi: nil Manager")
	}
	if opts.MaxBodyBytes < 0 {
		return nil, errors.New("httpapi: negative MaxBodyBytes")
	}
	if opts.MaxBodyBytes == 0 {
		opts.MaxBodyBytes = defaultMaxBody
	}
	names := map[string]bool{}
	for i, k := range opts.Keys {
		if names[k.Name] {
			return nil, fmt.Errorf("httpapi: key %d: duplicate name %q", i, k.Name)
		}
		names[k.Name] = true
	}
	h := &Handler{
		m:       m,
		keys:    append([]Key(nil), opts.Keys...),
		maxBody: opts.MaxBodyBytes,
		log:     opts.Logger.With().Str("component", "httpapi").Logger(),
		mux:     http.NewServeMux(),
	}
	h.ctx, h.cancel = context.WithCancel(context.Background())
	if reg := opts.Registerer; reg != nil {
		h.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_http_requests_total",
			Help: "Queue API requests, by route and status code.",
		}, []string{"route", "code"})
		h.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sluice_http_request_duration_seconds",
			Help:    "Queue API request durations (receive includes its long poll), by route.",
			Buckets: prometheus.ExponentialBuckets(100e-6, 4, 10),
		}, []string{"route"})
		for _, c := range []prometheus.Collector{h.requests, h.duration} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("httpapi: register metrics: %w", err)
			}
		}
	}
	h.mux.HandleFunc("GET /v1/queues", h.list)
	h.mux.HandleFunc("GET /v1/queues/{q}", h.stats)
	h.mux.HandleFunc("POST /v1/queues/{q}/messages", h.enqueue)
	h.mux.HandleFunc("DELETE /v1/queues/{q}/messages", h.purge)
	h.mux.HandleFunc("POST /v1/queues/{q}/receive", h.receive)
	h.mux.HandleFunc("POST /v1/queues/{q}/ack", h.ack)
	h.mux.HandleFunc("POST /v1/queues/{q}/nack", h.nack)
	h.mux.HandleFunc("POST /v1/queues/{q}/extend", h.extend)
	h.mux.HandleFunc("GET /v1/queues/{q}/dead", h.dead)
	h.mux.HandleFunc("POST /v1/queues/{q}/redrive", h.redrive)
	h.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, &httpError{http.StatusNotFound, "not_found", fmt.Sprintf("no endpoint %s %s", r.Method, r.URL.Path)})
	})
	return h, nil
}

// Register mounts the handler on mux at /v1/queues and below.
func (h *Handler) Register(mux *http.ServeMux) {
	mux.Handle("/v1/queues", h)
	mux.Handle("/v1/queues/", h)
}

// Close ends pending long polls (they answer with what they have, usually nothing) so that
// http.Server.Shutdown need not wait for them. Later requests are served as usual.
func (h *Handler) Close() {
	h.closeOnce.Do(h.cancel)
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// ServeHTTP serves the queue API.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.requests == nil {
		h.mux.ServeHTTP(w, r)
		return
	}
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w}
	h.mux.ServeHTTP(sw, r)
	route := r.Pattern // set by h.mux to the matched pattern
	if !strings.HasPrefix(route, "GET ") && !strings.HasPrefix(route, "POST ") && !strings.HasPrefix(route, "DELETE ") {
		route = "other"
	}
	if sw.code == 0 {
		sw.code = http.StatusOK
	}
	h.requests.WithLabelValues(route, strconv.Itoa(sw.code)).Inc()
	h.duration.WithLabelValues(route).Observe(time.Since(start).Seconds())
}

// httpError is an error answered as {"error":{"code":...,"message":...}}.
type httpError struct {
	status  int
	code    string
	message string
}

func (e *httpError) Error() string { return e.message }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client is gone if this fails
}

func writeError(w http.ResponseWriter, e *httpError) {
	switch e.status {
	case http.StatusUnauthorized:
		w.Header().Set("WWW-Authenticate", `Bearer realm="sluice"`)
	case http.StatusTooManyRequests, http.StatusServiceUnavailable:
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, e.status, api.ErrorBody{Error: api.Error{Code: e.code, Message: e.message}})
}

// queueError maps an error of the queue package to an HTTP answer.
func queueError(q string, err error) *httpError {
	switch {
	case errors.Is(err, queue.ErrNotFound):
		return &httpError{http.StatusNotFound, "queue_not_found", fmt.Sprintf("queue %q does not exist", q)}
	case errors.Is(err, queue.ErrInvalidName):
		return &httpError{http.StatusNotFound, "queue_not_found", fmt.Sprintf("queue %q does not exist: the name is not valid", q)}
	case errors.Is(err, queue.ErrFull):
		return &httpError{http.StatusTooManyRequests, "queue_full", fmt.Sprintf("queue %q is full", q)}
	case errors.Is(err, queue.ErrTooLarge):
		return &httpError{http.StatusRequestEntityTooLarge, "message_too_large", err.Error()}
	case errors.Is(err, queue.ErrInvalidLease), errors.Is(err, queue.ErrInvalidDelay):
		return &httpError{http.StatusBadRequest, "bad_request", err.Error()}
	case errors.Is(err, queue.ErrStaleReceipt):
		return &httpError{http.StatusConflict, "stale_receipt", "the receipt's lease has ended: the message was acked, nacked or re-delivered"}
	case errors.Is(err, queue.ErrInvalidReceipt):
		return &httpError{http.StatusBadRequest, "invalid_receipt", "the receipt does not belong to this queue"}
	case errors.Is(err, queue.ErrClosed), errors.Is(err, context.Canceled):
		return &httpError{http.StatusServiceUnavailable, "unavailable", "the queue service is shutting down"}
	case errors.Is(err, context.DeadlineExceeded):
		return &httpError{http.StatusServiceUnavailable, "timeout", "the queue did not answer in time"}
	}
	return &httpError{http.StatusInternalServerError, "internal", err.Error()}
}

// decode reads a JSON body of at most limit bytes into v, refusing unknown fields and trailing data.
// An empty body is the same as {}.
func decode(w http.ResponseWriter, r *http.Request, limit int64, v any) *httpError {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return &httpError{http.StatusRequestEntityTooLarge, "body_too_large", fmt.Sprintf("the request body is larger than %d bytes", limit)}
		}
		return &httpError{http.StatusBadRequest, "bad_request", "reading the request body: " + err.Error()}
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			return &httpError{http.StatusBadRequest, "unknown_field", "unknown field " + f + " in the request body"}
		}
		return &httpError{http.StatusBadRequest, "bad_json", "the request body is not valid JSON for this endpoint: " + strings.TrimPrefix(err.Error(), "json: ")}
	}
	if dec.More() {
		return &httpError{http.StatusBadRequest, "bad_json", "the request body has data after the JSON object"}
	}
	return nil
}

// begin authenticates and authorizes a request on queue {q}; it returns the queue name.
func (h *Handler) begin(w http.ResponseWriter, r *http.Request, want Rights) (string, bool) {
	key, herr := h.authenticate(r)
	if herr != nil {
		writeError(w, herr)
		return "", false
	}
	q := r.PathValue("q")
	if herr := authorize(key, q, want); herr != nil {
		writeError(w, herr)
		return "", false
	}
	return q, true
}

// beginJSON is begin, then decode of a JSON body of at most limit bytes into v; it answers the
// error itself.
func (h *Handler) beginJSON(w http.ResponseWriter, r *http.Request, want Rights, limit int64, v any) (string, bool) {
	q, ok := h.begin(w, r, want)
	if !ok {
		return "", false
	}
	if herr := decode(w, r, limit, v); herr != nil {
		writeError(w, herr)
		return "", false
	}
	return q, true
}

func (h *Handler) list(w http.ResponseWriter, r *http.Request) {
	key, herr := h.authenticate(r)
	if herr != nil {
		writeError(w, herr)
		return
	}
	resp := api.ListResponse{Queues: []api.Stats{}}
	for _, q := range h.m.Queues() {
		if authorize(key, q, anyRight) != nil {
			continue
		}
		st, err := h.m.Stats(q)
		if errors.Is(err, queue.ErrNotFound) {
			continue // purged or gone since Queues
		}
		if err != nil {
			writeError(w, queueError(q, err))
			return
		}
		resp.Queues = append(resp.Queues, toWireStats(st))
	}
	writeJSON(w, http.StatusOK, resp)
}

func (h *Handler) stats(w http.ResponseWriter, r *http.Request) {
	q, ok := h.begin(w, r, anyRight)
	if !ok {
		return
	}
	st, err := h.m.Stats(q)
	if err != nil {
		writeError(w, queueError(q, err))
		return
	}
	writeJSON(w, http.StatusOK, toWireStats(st))
}

func (h *Handler) enqueue(w http.ResponseWriter, r *http.Request) {
	var req api.EnqueueRequest
	q, ok := h.beginJSON(w, r, Produce, h.maxBody, &req)
	if !ok {
		return
	}
	switch {
	case len(req.Messages) == 0:
		writeError(w, &httpError{http.StatusBadRequest, "bad_request", `"messages" must hold at least one message`})
		return
	case len(req.Messages) > MaxBatch:
		writeError(w, &httpError{http.StatusBadRequest, "batch_too_large", fmt.Sprintf(`"messages" holds %d messages, the limit is %d`, len(req.Messages), MaxBatch)})
		return
	}
	msgs := make([]queue.Message, len(req.Messages))
	for i, m := range req.Messages {
		if m.QoS > 2 {
			writeError(w, &httpError{http.StatusBadRequest, "bad_request", fmt.Sprintf("message %d: qos must be 0, 1 or 2", i)})
			return
		}
		msgs[i] = queue.Message{Topic: m.Topic, ClientID: m.ClientID, QoS: m.QoS, Properties: fromWireProps(m.Properties), Payload: m.Payload}
	}
	ids, err := h.m.Enqueue(r.Context(), q, msgs)
	if err != nil {
		writeError(w, queueError(q, err))
		return
	}
	writeJSON(w, http.StatusCreated, api.EnqueueResponse{IDs: ids})
}

func (h *Handler) receive(w http.ResponseWriter, r *http.Request) {
	var req api.ReceiveRequest
	q, ok := h.beginJSON(w, r, Consume, maxSmallBody, &req)
	if !ok {
		return
	}
	maxN, wait, lease := 1, time.Duration(0), time.Duration(0)
	if req.Max != nil {
		maxN = *req.Max
		if maxN < 1 || maxN > MaxReceive {
			writeError(w, &httpError{http.StatusBadRequest, "bad_request", fmt.Sprintf(`"max" is %d, it must be between 1 and %d`, maxN, MaxReceive)})
			return
		}
	}
	if req.WaitMS != nil {
		if *req.WaitMS < 0 || *req.WaitMS > MaxWait.Milliseconds() {
			writeError(w, &httpError{http.StatusBadRequest, "bad_request", fmt.Sprintf(`"wait_ms" is %d, it must be between 0 and %d`, *req.WaitMS, MaxWait.Milliseconds())})
			return
		}
		wait = time.Duration(*req.WaitMS) * time.Millisecond
	}
	if req.LeaseMS != nil {
		if *req.LeaseMS <= 0 || *req.LeaseMS > maxLeaseMS {
			writeError(w, &httpError{http.StatusBadRequest, "bad_request", fmt.Sprintf(`"lease_ms" is %d, it must be between 1 and %d`, *req.LeaseMS, int64(maxLeaseMS))})
			return
		}
		lease = time.Duration(*req.LeaseMS) * time.Millisecond
	}
	// Check the queue exists before waiting on it.
	if _, err := h.m.Stats(q); err != nil {
		writeError(w, queueError(q, err))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), max(wait, minPoll))
	defer cancel()
	stop := context.AfterFunc(h.ctx, cancel)
	defer stop()
	ds, err := h.m.Receive(ctx, q, maxN, lease)
	if err != nil && !(ctx.Err() != nil && errors.Is(err, ctx.Err())) {
		writeError(w, queueError(q, err))
		return
	}
	resp := api.ReceiveResponse{Messages: make([]api.Message, len(ds))}
	for i, d := range ds {
		resp.Messages[i] = toWireMessage(d)
	}
	writeJSON(w, http.StatusOK, resp)
}

// minPoll is how long a receive with wait_ms 0 may take to collect what is ready.
const minPoll = 10 * time.Millisecond

// maxLeaseMS bounds lease_ms: 12 hours.
const maxLeaseMS = 12 * 3600 * 1000

type receiptOp func(q string, receipts []string, req *api.ReceiptsRequest) ([]error, error)

func (h *Handler) ack(w http.ResponseWriter, r *http.Request) {
	h.receipts(w, r, func(q string, rs []string, _ *api.ReceiptsRequest) ([]error, error) { return h.m.Ack(q, rs) })
}

func (h *Handler) nack(w http.ResponseWriter, r *http.Request) {
	h.receipts(w, r, func(q string, rs []string, req *api.ReceiptsRequest) ([]error, error) {
		var delay time.Duration
		if req.DelayMS != nil {
			delay = time.Duration(*req.DelayMS) * time.Millisecond
		}
		return h.m.Nack(q, rs, delay)
	})
}

func (h *Handler) extend(w http.ResponseWriter, r *http.Request) {
	h.receipts(w, r, func(q string, rs []string, req *api.ReceiptsRequest) ([]error, error) {
		return h.m.Extend(q, rs, time.Duration(*req.LeaseMS)*time.Millisecond)
	})
}

// receipts serves ack, nack and extend: a batch of receipts, answered per receipt.
// The status is 200 when some receipt succeeded; when none did, 409 if they were all stale,
// 400 otherwise (the body still says what happened to each).
func (h *Handler) receipts(w http.ResponseWriter, r *http.Request, op receiptOp) {
	var req api.ReceiptsRequest
	q, ok := h.beginJSON(w, r, Consume, maxSmallBody, &req)
	if !ok {
		return
	}
	action := r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]
	switch {
	case len(req.Receipts) == 0:
		writeError(w, &httpError{http.StatusBadRequest, "bad_request", `"receipts" must hold at least one receipt`})
		return
	case len(req.Receipts) > MaxBatch:
		writeError(w, &httpError{http.StatusBadRequest, "batch_too_large", fmt.Sprintf(`"receipts" holds %d receipts, the limit is %d`, len(req.Receipts), MaxBatch)})
		return
	case req.DelayMS != nil && action != "nack":
		writeError(w, &httpError{http.StatusBadRequest, "unknown_field", `"delay_ms" applies to nack only`})
		return
	case req.LeaseMS != nil && action != "extend":
		writeError(w, &httpError{http.StatusBadRequest, "unknown_field", `"lease_ms" applies to extend only`})
		return
	case req.DelayMS != nil && (*req.DelayMS < 0 || *req.DelayMS > maxLeaseMS):
		writeError(w, &httpError{http.StatusBadRequest, "bad_request", fmt.Sprintf(`"delay_ms" is %d, it must be between 0 and %d`, *req.DelayMS, int64(maxLeaseMS))})
		return
	case action == "extend" && req.LeaseMS == nil:
		writeError(w, &httpError{http.StatusBadRequest, "bad_request", `"lease_ms" is required`})
		return
	case req.LeaseMS != nil && (*req.LeaseMS <= 0 || *req.LeaseMS > maxLeaseMS):
		writeError(w, &httpError{http.StatusBadRequest, "bad_request", fmt.Sprintf(`"lease_ms" is %d, it must be between 1 and %d`, *req.LeaseMS, int64(maxLeaseMS))})
		return
	}
	for i, rc := range req.Receipts {
		if rc == "" {
			writeError(w, &httpError{http.StatusBadRequest, "bad_request", fmt.Sprintf("receipt %d is empty", i)})
			return
		}
	}
	errs, err := op(q, req.Receipts, &req)
	if err != nil {
		writeError(w, queueError(q, err))
		return
	}
	if len(errs) != len(req.Receipts) {
		writeError(w, &httpError{http.StatusInternalServerError, "internal", fmt.Sprintf("the queue answered %d results for %d receipts", len(errs), len(req.Receipts))})
		return
	}
	resp := api.ReceiptsResponse{Results: make([]api.ReceiptResult, len(errs))}
	oks, stale := 0, 0
	for i, e := range errs {
		res := api.ReceiptResult{Receipt: req.Receipts[i], OK: e == nil}
		if e == nil {
			oks++
		} else {
			he := queueError(q, e)
			if he.status == http.StatusConflict {
				stale++
			}
			res.Error = &api.Error{Code: he.code, Message: he.message}
		}
		resp.Results[i] = res
	}
	status := http.StatusOK
	switch {
	case oks > 0:
	case stale == len(errs):
		status = http.StatusConflict
	default:
		status = http.StatusBadRequest
	}
	writeJSON(w, status, resp)
}

func (h *Handler) dead(w http.ResponseWriter, r *http.Request) {
	q, ok := h.begin(w, r, Admin)
	if !ok {
		return
	}
	n := defaultDeadPeek
	if s := r.URL.Query().Get("max"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 || v > MaxDeadPeek {
			writeError(w, &httpError{http.StatusBadRequest, "bad_request", fmt.Sprintf(`"max" is %q, it must be a number between 1 and %d`, s, MaxDeadPeek)})
			return
		}
		n = v
	}
	for k := range r.URL.Query() {
		if k != "max" {
			writeError(w, &httpError{http.StatusBadRequest, "unknown_field", fmt.Sprintf("unknown query parameter %q", k)})
			return
		}
	}
	dls, err := h.m.PeekDead(q, n)
	if err != nil {
		writeError(w, queueError(q, err))
		return
	}
	resp := api.DeadResponse{Messages: make([]api.DeadLetter, len(dls))}
	for i, d := range dls {
		resp.Messages[i] = toWireDeadLetter(d)
	}
	writeJSON(w, http.StatusOK, resp)
}

func (h *Handler) redrive(w http.ResponseWriter, r *http.Request) {
	var req api.RedriveRequest
	q, ok := h.beginJSON(w, r, Admin, maxSmallBody, &req)
	if !ok {
		return
	}
	if len(req.IDs) > MaxBatch {
		writeError(w, &httpError{http.StatusBadRequest, "batch_too_large", fmt.Sprintf(`"ids" holds %d ids, the limit is %d`, len(req.IDs), MaxBatch)})
		return
	}
	n, err := h.m.Redrive(r.Context(), q, req.IDs)
	if err != nil {
		writeError(w, queueError(q, err))
		return
	}
	writeJSON(w, http.StatusOK, api.CountResponse{Redriven: &n})
}

func (h *Handler) purge(w http.ResponseWriter, r *http.Request) {
	q, ok := h.begin(w, r, Admin)
	if !ok {
		return
	}
	n, err := h.m.Purge(r.Context(), q)
	if err != nil {
		writeError(w, queueError(q, err))
		return
	}
	writeJSON(w, http.StatusOK, api.CountResponse{Purged: &n})
}
