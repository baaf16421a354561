//! The live view: a panel redrawn in place (crossterm) when stdout is a terminal, one plain
//! line a second otherwise (CI, pipes).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossterm::{cursor, queue, terminal};
use tower_breaker::State;

use super::backend::{Backend, POOL_SIZE};
use super::gateway::Handles;
use super::load::{Kind, PHASES, Snapshot, Stats, TOTAL};

/// What the view shows: one run.
pub(crate) struct Run {
    /// "with the layers" or "without the layers".
    pub(crate) label: &'static str,
    /// 1 or 2.
    pub(crate) number: usize,
    pub(crate) stats: Arc<Stats>,
    pub(crate) backend: Arc<Backend>,
    /// The layers' handles; `None` for the bare gateway.
    pub(crate) handles: Option<Handles>,
    pub(crate) started: Instant,
}

/// A breaker state as words.
pub(crate) fn state_text(state: State) -> &'static str {
    match state {
        State::Closed => "closed",
        State::Open => "OPEN",
        State::HalfOpen => "half-open",
        State::ForcedOpen => "forced open",
        State::Disabled => "disabled",
        State::MetricsOnly => "metrics only",
    }
}

fn ms(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{} ms", d.as_millis())
    }
}

fn bar(done: u64, total: u64, width: usize) -> String {
    let filled = (done.min(total) as usize * width) / (total.max(1) as usize);
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

fn answers(s: &Snapshot) -> String {
    Kind::ALL
        .iter()
        .filter(|k| **k == Kind::Ok || s.count(**k) > 0)
        .map(|k| format!("{} {}", k.label(), s.count(*k)))
        .collect::<Vec<_>>()
        .join("  ")
}

fn breaker_text(h: &tower_breaker::BreakerHandle) -> String {
    let mut text = format!(
        "{} ({:.0}% failing",
        state_text(h.state()),
        h.failure_rate() * 100.0
    );
    if let Some(left) = h.remaining_open_time() {
        text.push_str(&format!(", probe in {}", ms(left)));
    }
    text.push_str(&format!(", {} refused)", h.rejected_calls()));
    text
}

/// The panel's lines.
fn panel(run: &Run) -> Vec<String> {
    let s = run.stats.snapshot();
    let b = run.backend.counts();
    let phase = &PHASES[s.phase.min(PHASES.len() - 1)];
    let mut lines = vec![
        format!(
            "── run {} of 2: the gateway {} ── {:.1} s ──",
            run.number,
            run.label,
            run.started.elapsed().as_secs_f64()
        ),
        format!(
            "phase      {}/{} {:<16} {}",
            s.phase + 1,
            PHASES.len(),
            phase.name,
            phase.what
        ),
        format!(
            "progress   {} {}/{} sent, {} answered, {} in flight",
            bar(s.sent + s.not_sent, TOTAL, 30),
            s.sent,
            TOTAL,
            s.answered,
            s.sent.saturating_sub(s.answered)
        ),
        format!(
            "last 1 s   {} answers/s   p50 {}   p99 {}",
            s.rate,
            ms(s.recent_p50),
            ms(s.recent_p99)
        ),
        format!("answers    {}", answers(&s)),
    ];
    match &run.handles {
        Some(h) => {
            lines.push(format!(
                "breakers   backend {}   reports {}   gateway (server) {}",
                breaker_text(&h.breakers[0]),
                state_text(h.breakers[1].state()),
                state_text(h.gateway_breaker.state())
            ));
            // One figure per partition, named when there are several.
            let in_flight = |b: &tower_bulkhead::BulkheadHandle| {
                let stats = b.stats();
                let named = stats.len() > 1;
                stats
                    .iter()
                    .map(|p| match named {
                        true => format!("{} {}/{}", p.name, p.in_flight, p.limit),
                        false => format!("{}/{}", p.in_flight, p.limit),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            lines.push(format!(
                "bulkheads  in flight: backend {}   reports {}   gateway (server) {}",
                in_flight(&h.bulkheads[0]),
                in_flight(&h.bulkheads[1]),
                in_flight(&h.gateway_bulkhead)
            ));
            lines.push(format!(
                "retries    {} by the gateway, budget {:.0} left   callers: {} POSTs re-sent, {} answers lost on the link",
                b.retries,
                h.budget.balance(tokio::time::Instant::now()),
                s.caller_retries,
                s.lost
            ));
        }
        None => {
            lines.push("breakers   none".to_owned());
            lines.push("bulkheads  none".to_owned());
            lines.push(format!(
                "retries    none by the gateway   callers: {} POSTs re-sent, {} answers lost on the link",
                s.caller_retries, s.lost
            ));
        }
    }
    lines.push(format!(
        "orders     {} placed, {} duplicate side effects, {} idempotent replays",
        b.side_effects, b.duplicates, s.replays
    ));
    lines.push(format!(
        "fallbacks  {} served (stale answers for /items)",
        s.fallbacks
    ));
    lines.push(format!(
        "backend    {} calls reached it ({} retries), pool {}/{} in use",
        b.calls, b.retries, b.pool_in_use, POOL_SIZE
    ));
    lines
}

/// One plain line.
fn line(run: &Run) -> String {
    let s = run.stats.snapshot();
    let b = run.backend.counts();
    let phase = &PHASES[s.phase.min(PHASES.len() - 1)];
    let breaker = run
        .handles
        .as_ref()
        .map_or("none", |h| state_text(h.breakers[0].state()));
    format!(
        "[run {} {}] {:>5.1}s phase {}/{} {:<15} sent {:>4} ok {:>4} errors {:>4} p99(1s) {:>7} breaker {:<9} backend calls {:>4} stale {:>3} replays {:>2} duplicates {}",
        run.number,
        if run.handles.is_some() {
            "layered"
        } else {
            "bare"
        },
        run.started.elapsed().as_secs_f64(),
        s.phase + 1,
        PHASES.len(),
        phase.name,
        s.sent,
        s.count(Kind::Ok),
        s.errors(),
        ms(s.recent_p99),
        breaker,
        b.calls,
        s.fallbacks,
        s.replays,
        b.duplicates
    )
}

/// Redraws the view until `stop` is set, then draws it once more.
pub(crate) async fn show(run: Run, stop: Arc<AtomicBool>) {
    let tty = std::io::stdout().is_terminal();
    let period = if tty {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(1)
    };
    let mut drawn = 0u16;
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let last = stop.load(Ordering::Relaxed);
        if tty {
            drawn = redraw(&panel(&run), drawn);
        } else {
            println!("{}", line(&run));
        }
        if last {
            break;
        }
    }
}

/// Draws `lines` over the `drawn` lines of the previous frame; returns how many it drew.
fn redraw(lines: &[String], drawn: u16) -> u16 {
    let width = terminal::size().map_or(120, |(w, _)| w.max(20)) as usize;
    let mut out = std::io::stdout().lock();
    if drawn > 0 {
        let _ = queue!(out, cursor::MoveToPreviousLine(drawn));
    }
    let _ = queue!(out, terminal::Clear(terminal::ClearType::FromCursorDown));
    for l in lines {
        // Cut to the terminal's width: a wrapped line would throw the next redraw off.
        let cut: String = l.chars().take(width - 1).collect();
        let _ = writeln!(out, "{cut}");
    }
    let _ = out.flush();
    u16::try_from(lines.len()).unwrap_or(u16::MAX)
}
