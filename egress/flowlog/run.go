package flowlog

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ti-mo/conntrack"
)

// Queue sizes between the goroutines of Run.
const (
	eventQueue = 1024 // batches of events (one receive each)
	getQueue   = 4096 // Get requests for closing flows
	alertQueue = 1024 // alerts waiting for the quarantiner and the sink
)

type getRequest struct {
	key   flowKey
	tuple conntrack.Tuple
	zone  uint16
}

type getResult struct {
	key  flowKey
	flow conntrack.Flow
	err  error
}

type dumpResult struct {
	flows   []conntrack.Flow
	started time.Time
	err     error
}

// Run follows the kernel until ctx ends (or Close): conntrack events on
// one socket, a Dump every Interval on another, and the NFLOG group. It
// then writes out the queued records and returns nil, or the error of a
// socket that failed. It may be called once.
func (l *Logger) Run(ctx context.Context) error {
	l.mu.Lock()
	if l.closed || l.running {
		l.mu.Unlock()
		return ErrClosed
	}
	l.running = true
	l.mu.Unlock()
	defer close(l.runDone)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-l.stop:
			cancel()
		case <-ctx.Done():
		}
	}()

	var wg sync.WaitGroup
	evCh := make(chan []conntrack.Event, eventQueue)
	pktCh := make(chan []logPacket, 64)
	overrun := make(chan struct{}, 1)
	getReq := make(chan getRequest, getQueue)
	getRes := make(chan getResult, 64)
	dumpNow := make(chan struct{}, 1)
	dumpRes := make(chan dumpResult)
	alerts := make(chan Alert, alertQueue)
	fatal := make(chan error, 2)

	wg.Add(3)
	go func() { defer wg.Done(); l.readEvents(ctx, evCh, overrun, fatal) }()
	go func() { defer wg.Done(); l.readNFLOG(ctx, pktCh, fatal) }()
	go func() { defer wg.Done(); l.serveDumps(ctx, dumpNow, dumpRes, getReq, getRes) }()
	// Alerts outlive ctx by up to alertDrain, so that queued ones still
	// reach the sink.
	pubCtx, pubCancel := context.WithCancel(context.WithoutCancel(ctx))
	defer pubCancel()
	dispatched := make(chan struct{})
	go func() { defer close(dispatched); l.dispatch(pubCtx, alerts) }()

	t := newTracker(&l.cfg, l.metrics, func(k flowKey, tu conntrack.Tuple, zone uint16) bool {
		select {
		case getReq <- getRequest{k, tu, zone}:
			return true
		default: // the next Dump or the Destroy will bring the counters
			return false
		}
	})
	flush := func() {
		c, as := t.take()
		if l.writer != nil {
			l.writer.send(c)
		}
		for _, a := range as {
			l.metrics.alerts.WithLabelValues(a.Kind).Inc()
			select {
			case alerts <- a:
			default:
				l.metrics.alertsDropped.Inc()
				l.log.Warn("egress alert queue full; alert dropped", "kind", a.Kind, "client_ip", a.Client.IP, "dst", a.Dst)
			}
		}
	}
	onEvents := func(evs []conntrack.Event) {
		now := l.cfg.Now()
		for i := range evs {
			t.event(&evs[i], now)
		}
	}
	onPackets := func(pkts []logPacket) {
		now := l.cfg.Now()
		for i := range pkts {
			t.packet(&pkts[i], now)
		}
	}
	ticker := time.NewTicker(l.cfg.Interval)
	defer ticker.Stop()
	var gen uint64
	askDump := func() {
		select {
		case dumpNow <- struct{}{}:
		default:
		}
	}
	askDump() // flows that began before the events socket existed
	var runErr error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case runErr = <-fatal:
			break loop
		case evs := <-evCh:
			onEvents(evs)
		case pkts := <-pktCh:
			onPackets(pkts)
		case r := <-getRes:
			t.got(r.key, &r.flow, r.err, l.cfg.Now())
		case <-overrun:
			askDump()
		case <-ticker.C:
			askDump()
		case r := <-dumpRes:
			if r.err != nil {
				l.log.Warn("conntrack dump failed", "error", r.err)
				break
			}
			// Events read before the Dump's answer go first: a Destroy
			// there must not be overtaken by an interval record.
			for n := 0; n < eventQueue; n++ {
				select {
				case evs := <-evCh:
					onEvents(evs)
					continue
				default:
				}
				break
			}
			gen++
			t.dump(r.flows, gen, r.started, l.cfg.Now())
		}
		flush()
	}
	cancel()
	// Closing the sockets ends the blocked receives.
	l.closeSockets()
	wg.Wait()
	// Drain what the readers had queued.
	for done := false; !done; {
		select {
		case evs := <-evCh:
			onEvents(evs)
		case pkts := <-pktCh:
			onPackets(pkts)
		default:
			done = true
		}
	}
	flush()
	close(alerts)
	if l.writer != nil {
		l.writer.close()
	}
	timer := time.AfterFunc(alertDrain, pubCancel)
	<-dispatched
	timer.Stop()
	return runErr
}

// alertDrain bounds how long Run waits, after ctx ends, for queued alerts
// to be published.
const alertDrain = 5 * time.Second

// readEvents receives conntrack events until the socket is closed.
func (l *Logger) readEvents(ctx context.Context, out chan<- []conntrack.Event, overrun chan<- struct{}, fatal chan<- error) {
	for {
		evs, err := l.events.receive(nil)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if isOverrun(err) {
				// Events were lost: count, and resynchronise with a Dump.
				l.metrics.overruns.Inc()
				l.log.Warn("conntrack event socket overrun; resynchronising", "error", err)
				select {
				case overrun <- struct{}{}:
				default:
				}
				continue
			}
			fatal <- fmt.Errorf("flowlog: conntrack events: %w", err)
			return
		}
		if len(evs) == 0 {
			continue
		}
		l.metrics.events.Add(float64(len(evs)))
		select {
		case out <- evs:
		case <-ctx.Done():
			return
		}
	}
}

// readNFLOG receives logged packets until the socket is closed, first
// binding the group if another process held it at New.
func (l *Logger) readNFLOG(ctx context.Context, out chan<- []logPacket, fatal chan<- error) {
	n := l.nflog.Load()
	if n == nil {
		if n = l.waitNFLOG(ctx, fatal); n == nil {
			return
		}
	}
	for {
		pkts, err := n.receive(nil)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if isOverrun(err) {
				l.metrics.nflogOverruns.Inc()
				l.log.Warn("nflog socket overrun", "error", err)
				continue
			}
			fatal <- fmt.Errorf("flowlog: nflog: %w", err)
			return
		}
		if len(pkts) == 0 {
			continue
		}
		l.metrics.nflogPackets.Add(float64(len(pkts)))
		select {
		case out <- pkts:
		case <-ctx.Done():
			return
		}
	}
}

// nflogRetry is how often a group held by another process is tried again.
const nflogRetry = 250 * time.Millisecond

// waitNFLOG binds the NFLOG group once the process holding it (the agent
// this one succeeds) let go; nil when ctx ends first or binding fails
// otherwise (reported on fatal).
func (l *Logger) waitNFLOG(ctx context.Context, fatal chan<- error) *nflogConn {
	t := time.NewTicker(nflogRetry)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		n, err := dialNFLOG(l.cfg.NetNSFd, nflogGroup)
		if errors.Is(err, errGroupBusy) {
			continue
		}
		if err != nil {
			fatal <- err
			return nil
		}
		// Stored before ctx is checked: Run cancels ctx before
		// closeSockets, so either this closes n or closeSockets does.
		l.nflog.Store(n)
		if ctx.Err() != nil {
			n.Close()
			return nil
		}
		l.log.Info("nflog group bound", "group", nflogGroup)
		return n
	}
}

// serveDumps owns the dump socket: full Dumps when asked, and Gets of
// closing flows in between.
func (l *Logger) serveDumps(ctx context.Context, dumpNow <-chan struct{}, out chan<- dumpResult, reqs <-chan getRequest, res chan<- getResult) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-dumpNow:
			started := l.cfg.Now()
			flows, err := l.dump.dump()
			select {
			case out <- dumpResult{flows: flows, started: started, err: err}:
			case <-ctx.Done():
				return
			}
		case r := <-reqs:
			f, err := l.dump.get(r.tuple, r.zone)
			select {
			case res <- getResult{key: r.key, flow: f, err: err}:
			case <-ctx.Done():
				return
			}
		}
	}
}

// dispatch quarantines where the alert's action says so and publishes.
// It returns when in is closed and drained.
func (l *Logger) dispatch(ctx context.Context, in <-chan Alert) {
	for a := range in {
		if a.Action == ActionQuarantined {
			if err := l.cfg.Quarantiner.QuarantineAddr(a.Client.IP, a.Dst.Addr()); err != nil {
				l.log.Warn("quarantine failed", "client_ip", a.Client.IP, "dst", a.Dst.Addr(), "error", err)
				a.Action = ActionAlerted
				a.Message += "; quarantine failed: " + err.Error()
			} else {
				a.Message += fmt.Sprintf("; %s is now blocked for this workload (lift with DELETE /v1/egress/quarantines/%s/%s)", a.Dst.Addr(), a.Client.IP, a.Dst.Addr())
			}
		}
		if l.cfg.Alerts == nil {
			continue
		}
		if err := l.cfg.Alerts.Publish(ctx, a); err != nil {
			l.log.Warn("egress alert not published", "kind", a.Kind, "client_ip", a.Client.IP, "error", err)
		}
	}
}
