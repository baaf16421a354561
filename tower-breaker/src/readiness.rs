//! [`BreakerHandle`] as a [`tower_red::readiness::Dependency`], so a breaker can be registered
//! with a [`tower_red::Readiness`].
//!
//! A breaker is unavailable while it refuses every call: [`State::ForcedOpen`], and
//! [`State::Open`] while its open time runs. Half-open counts as available (probes flow), and so
//! does an open circuit whose open time has passed: only a call moves it to half-open, and an
//! instance taken out of rotation for it would never get that call.
//!
//! ```
//! use tower_breaker::BreakerLayer;
//! use tower_red::Readiness;
//!
//! let breaker = BreakerLayer::new("inventory");
//! let readiness = Readiness::new().critical(breaker.handle());
//! assert!(readiness.report().is_ready());
//!
//! breaker.handle().force_open();
//! let report = readiness.report();
//! assert_eq!(report.status(), 503);
//! assert_eq!(report.entry("inventory").unwrap().snapshot().state(), "forced_open");
//! ```

use std::time::Duration;

use tower_red::readiness::{Dependency, Kind, Snapshot};

use crate::event::State;
use crate::handle::BreakerHandle;
use crate::keyed::KeyedBreakerHandle;

/// A breaker's state, whether it admits calls now, and (while open) the open time left.
fn availability(breaker: &BreakerHandle) -> (State, bool, Option<Duration>) {
    let state = breaker.state();
    let (available, open_for) = match state {
        State::Open => {
            // Read after the state: a circuit that moved on meanwhile reads zero time left.
            let left = breaker.remaining_open_time().unwrap_or(Duration::ZERO);
            (left.is_zero(), Some(left))
        }
        State::ForcedOpen => (false, None),
        State::Closed | State::HalfOpen | State::Disabled | State::MetricsOnly => (true, None),
    };
    (state, available, open_for)
}

impl Dependency for BreakerHandle {
    fn name(&self) -> &str {
        BreakerHandle::name(self)
    }

    fn kind(&self) -> Kind {
        Kind::Breaker
    }

    /// The state, whether it refuses calls, the open time left (while open), and the window's
    /// `calls`, `failures` and `slow` calls, `consecutive_failures` and `rejected_total`.
    fn snapshot(&self) -> Snapshot {
        let (state, available, open_for) = availability(self);
        let counts = self.counts();
        let mut snapshot = Snapshot::new(state.as_str(), available);
        if let Some(left) = open_for {
            snapshot = snapshot.with_open_for(left);
        }
        snapshot
            .with_count("calls", counts.calls)
            .with_count("failures", counts.failures)
            .with_count("slow", counts.slow)
            .with_count(
                "consecutive_failures",
                u64::from(self.consecutive_failures()),
            )
            .with_count("rejected_total", self.rejected_calls())
    }
}

/// The whole keyed layer as one dependency: see [`KeyedBreakerHandle`] for what it reports.
impl<K: Send + Sync + 'static> Dependency for KeyedBreakerHandle<K> {
    fn name(&self) -> &str {
        KeyedBreakerHandle::name(self)
    }

    fn kind(&self) -> Kind {
        Kind::Breaker
    }

    fn snapshot(&self) -> Snapshot {
        let breakers = self.breakers();
        let (mut refusing, mut half_open, mut rejected) = (0u64, 0u64, 0u64);
        // The first time a refusing key may be tried again (`None` if all are forced open).
        let mut next_try: Option<Duration> = None;
        for breaker in &breakers {
            let (state, available, open_for) = availability(breaker);
            if !available {
                refusing += 1;
                if let Some(left) = open_for {
                    next_try = Some(next_try.map_or(left, |t| t.min(left)));
                }
            }
            half_open += u64::from(state == State::HalfOpen);
            rejected += breaker.rejected_calls();
        }
        let keys = breakers.len() as u64;
        let all_refuse = keys > 0 && refusing == keys;
        let state = match refusing {
            0 => "closed",
            _ if all_refuse => "open",
            _ => "partially_open",
        };
        let mut snapshot = Snapshot::new(state, !all_refuse);
        if all_refuse && let Some(left) = next_try {
            snapshot = snapshot.with_open_for(left);
        }
        snapshot
            .with_count("keys", keys)
            .with_count("open", refusing)
            .with_count("half_open", half_open)
            .with_count("rejected_total", rejected)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use tokio::sync::oneshot;
    use tower::{ServiceExt, service_fn};
    use tower_red::BoxError;

    use super::*;
    use crate::BreakerLayer;

    const OPEN: Duration = Duration::from_secs(8);

    fn snap(handle: &BreakerHandle) -> Snapshot {
        Dependency::snapshot(handle)
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_is_unavailable_until_its_open_time_passes_then_half_open_is_available()
    {
        let layer = BreakerLayer::builder()
            .name("inventory")
            .consecutive_failures(2)
            .open_time(OPEN)
            .permitted_probes(1)
            .metrics(false)
            .build()
            .unwrap();
        let handle = layer.handle();
        assert_eq!(Dependency::name(&handle), "inventory");
        assert_eq!(Dependency::kind(&handle), Kind::Breaker);
        let closed = snap(&handle);
        assert_eq!((closed.state(), closed.is_available()), ("closed", true));
        assert_eq!(closed.open_for(), None);

        let svc = tower::ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(|done: oneshot::Receiver<bool>| async move {
                match done.await {
                    Ok(true) => Ok(()),
                    _ => Err(BoxError::from("down")),
                }
            }));
        for _ in 0..2 {
            let (tx, rx) = oneshot::channel();
            tx.send(false).unwrap();
            assert!(svc.clone().oneshot(rx).await.is_err());
        }
        let open = snap(&handle);
        assert_eq!((open.state(), open.is_available()), ("open", false));
        assert_eq!(open.open_for(), Some(OPEN));
        let names: Vec<&str> = open.counts().iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            [
                "calls",
                "failures",
                "slow",
                "consecutive_failures",
                "rejected_total"
            ]
        );
        assert_eq!(open.counts()[3], ("consecutive_failures", 2));

        tokio::time::advance(OPEN - Duration::from_millis(1)).await;
        let almost = snap(&handle);
        assert!(!almost.is_available());
        assert_eq!(almost.open_for(), Some(Duration::from_millis(1)));

        tokio::time::advance(Duration::from_millis(1)).await;
        let due = snap(&handle);
        assert_eq!((due.state(), due.is_available()), ("open", true));
        assert_eq!(due.open_for(), Some(Duration::ZERO));

        let (tx, rx) = oneshot::channel();
        let mut probe = tokio_test::task::spawn(svc.clone().oneshot(rx));
        tokio_test::assert_pending!(probe.poll());
        let half_open = snap(&handle);
        assert_eq!(
            (half_open.state(), half_open.is_available()),
            ("half_open", true)
        );
        assert_eq!(half_open.open_for(), None);
        tx.send(true).unwrap();
        probe.await.unwrap();
        assert_eq!(snap(&handle).state(), "closed");
    }

    #[test]
    fn forced_open_is_unavailable_and_the_other_sticky_states_are_available() {
        let handle = BreakerLayer::new("inventory").handle();
        handle.force_open();
        let forced = snap(&handle);
        assert_eq!(
            (forced.state(), forced.is_available()),
            ("forced_open", false)
        );
        assert_eq!(forced.open_for(), None);
        handle.disable();
        assert_eq!(
            (snap(&handle).state(), snap(&handle).is_available()),
            ("disabled", true)
        );
        handle.metrics_only();
        assert_eq!(
            (snap(&handle).state(), snap(&handle).is_available()),
            ("metrics_only", true)
        );
    }

    /// A keyed layer is one dependency, available while any live key admits calls: unready
    /// (503) only once every key is open, and ready again when the first open time passes.
    #[tokio::test(start_paused = true)]
    async fn a_keyed_breaker_is_unavailable_only_while_every_live_key_refuses_calls() {
        let layer = BreakerLayer::builder()
            .name("replicas")
            .consecutive_failures(1)
            .open_time(OPEN)
            .metrics(false)
            .build_keyed(|req: &(u8, bool)| req.0)
            .unwrap();
        let keys = layer.keys_handle();
        let readiness = tower_red::Readiness::new().critical(keys.clone());
        assert_eq!(Dependency::name(&keys), "replicas");
        assert_eq!(Dependency::kind(&keys), Kind::Breaker);
        let none = Dependency::snapshot(&keys);
        assert_eq!((none.state(), none.is_available()), ("closed", true));
        assert_eq!(none.counts()[0], ("keys", 0));
        assert!(readiness.report().is_ready());

        let svc = tower::Layer::layer(
            &layer,
            service_fn(|(_, ok): (u8, bool)| async move {
                if ok {
                    Ok(())
                } else {
                    Err(BoxError::from("down"))
                }
            }),
        );
        assert!(svc.clone().oneshot((1, false)).await.is_err());
        svc.clone().oneshot((2, true)).await.unwrap();
        let some = Dependency::snapshot(&keys);
        assert_eq!(
            (some.state(), some.is_available()),
            ("partially_open", true)
        );
        assert_eq!(some.open_for(), None);
        assert_eq!(
            some.counts(),
            [
                ("keys", 2),
                ("open", 1),
                ("half_open", 0),
                ("rejected_total", 0)
            ]
        );
        assert!(readiness.report().is_ready());

        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(svc.clone().oneshot((2, false)).await.is_err());
        assert!(
            svc.clone().oneshot((2, true)).await.is_err(),
            "refused while open"
        );
        let all = Dependency::snapshot(&keys);
        assert_eq!((all.state(), all.is_available()), ("open", false));
        assert_eq!(
            all.open_for(),
            Some(OPEN - Duration::from_secs(1)),
            "until key 1, opened first, may be tried again"
        );
        assert_eq!(all.counts()[1], ("open", 2));
        assert_eq!(all.counts()[3], ("rejected_total", 1));
        let report = readiness.report();
        assert_eq!(report.status(), 503);
        assert_eq!(report.entry("replicas").unwrap().snapshot().state(), "open");

        tokio::time::advance(OPEN - Duration::from_secs(1)).await;
        let due = Dependency::snapshot(&keys);
        assert_eq!((due.state(), due.is_available()), ("partially_open", true));
        assert!(readiness.report().is_ready());

        // A probe through key 1 half-opens it; forcing key 2 open keeps it refusing.
        layer.handle(&2).unwrap().force_open();
        let (tx, rx) = oneshot::channel::<()>();
        let mut rx = Some(rx);
        let probe_svc = tower::Layer::layer(
            &layer,
            service_fn(move |_: (u8, bool)| {
                let rx = rx.take().expect("one call");
                async move { rx.await.map_err(|_| BoxError::from("gone")) }
            }),
        );
        let mut probe = tokio_test::task::spawn(probe_svc.oneshot((1, true)));
        tokio_test::assert_pending!(probe.poll());
        let probing = Dependency::snapshot(&keys);
        assert_eq!(
            (probing.state(), probing.is_available()),
            ("partially_open", true)
        );
        assert_eq!(probing.counts()[2], ("half_open", 1));
        tx.send(()).unwrap();
        probe.await.unwrap();
        assert_eq!(Dependency::snapshot(&keys).counts()[1], ("open", 1));
    }
}
