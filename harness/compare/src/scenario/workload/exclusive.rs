//! The exclusive lock through `dlock hold`: one holder at a time, the others wait.

use std::time::Duration;

use anyhow::{Result, anyhow};

use super::{Approach, BoxFuture, Ctx, Role, Trial, Workload};
use crate::scenario::WAITER_SETTLE;
use crate::scenario::history::History;
use crate::scenario::holder::{Event, EventKind, HoldMode, HoldSpec, Holder};
use dlock_fixtures::netns::Netns;

/// How long the first holder has to get the lock, and the waiter to say it waits.
pub(crate) const FIRST_GRANT: Duration = Duration::from_secs(30);

/// The exclusive lock, held by `dlock hold` child processes.
#[derive(Debug, Clone, Copy)]
pub struct ExclusiveLock;

impl Workload for ExclusiveLock {
    fn name(&self) -> &str {
        "exclusive"
    }

    fn spec(&self, url: &str, name: &str, ttl: Duration, role: Role) -> HoldSpec {
        super::hold_spec(url, name, ttl, role, HoldMode::Exclusive, None)
    }

    fn begin<'a: 'b, 'b>(
        &'b self,
        ctx: &'a Ctx<'a>,
        how: &'b Approach,
        netns: Option<&'b Netns>,
    ) -> BoxFuture<'b, Result<Trial<'a>>> {
        Box::pin(begin(ctx, how, netns))
    }
}

/// The subject acquires, the contender is started and settles.
async fn begin<'a>(ctx: &'a Ctx<'a>, how: &Approach, netns: Option<&Netns>) -> Result<Trial<'a>> {
    let (spec_a, spec_b) = specs(ctx, how);
    let a = Holder::spawn_in(&ctx.opts.dlock_bin, &spec_a, netns)?;
    hold_then_queue(ctx, a, None, &spec_b).await
}

/// The subject's spec (through `how`) and the contender's (on the target's URL).
pub(super) fn specs(ctx: &Ctx<'_>, how: &Approach) -> (HoldSpec, HoldSpec) {
    let url = ctx.target.url.as_str();
    let mut spec_a = ctx.spec(how.subject_url.as_deref().unwrap_or(url), Role::Subject);
    spec_a.skew = how.subject_skew.clone();
    let mut spec_b = ctx.spec(url, Role::Contender);
    spec_b.skew = how.contender_skew.clone();
    (spec_a, spec_b)
}

/// The subject `a` acquires; then the contender — `b` when it was started already (a peer
/// holder waits to be told), else one started from `spec_b` now — queues behind it.
pub(super) async fn hold_then_queue<'a>(
    ctx: &'a Ctx<'a>,
    mut a: Holder,
    b: Option<Holder>,
    spec_b: &HoldSpec,
) -> Result<Trial<'a>> {
    let mut history = History::new();
    let res = &mut history.resource;
    let first = match a.acquired(FIRST_GRANT).await {
        Ok(Some(ev)) => Ok(ev),
        Ok(None) => Err(anyhow!(
            "the first holder got no grant within {FIRST_GRANT:?}: {}",
            a.stderr()
        )),
        Err(e) => Err(e),
    };
    let ev = match first {
        Ok(ev) => ev,
        Err(e) => {
            a.finish().await;
            if let Some(b) = b {
                b.finish().await;
            }
            return Err(e);
        }
    };
    let EventKind::Acquired { token } = ev.kind else {
        unreachable!("acquired() returns acquired events")
    };
    res.enter(0, token, ev.t_us);
    res.write(0, token, ev.t_us);
    let mut b = match b {
        Some(b) => b,
        None => match Holder::spawn(&ctx.opts.dlock_bin, spec_b) {
            Ok(b) => b,
            Err(e) => {
                a.finish().await;
                return Err(e);
            }
        },
    };
    let b_ended = |err: String| anyhow!("the waiter ended before the fault: {err}");
    // B tries once, finds the lock held and says `waiting`; a grant instead is an overlap
    // (A holds), recorded as such.
    let failure = match b.waiting_or_acquired(FIRST_GRANT).await {
        Ok(Some(Event {
            kind: EventKind::Acquired { token },
            t_us,
            ..
        })) => {
            res.enter(1, token, t_us);
            None
        }
        // Settle: the waiting request is sent right after the event (see WAITER_SETTLE).
        Ok(Some(_)) => match b
            .next_event(WAITER_SETTLE)
            .await
            .map(|ev| (ev.kind, ev.t_us))
        {
            Some((EventKind::Acquired { token }, t_us)) => {
                res.enter(1, token, t_us);
                None
            }
            Some((EventKind::Ended, _)) => Some(b_ended(b.stderr())),
            _ => None,
        },
        Ok(None) => Some(anyhow!(
            "the waiter printed neither waiting nor acquired within {FIRST_GRANT:?}: {}",
            b.stderr()
        )),
        Err(e) => Some(b_ended(format!("{e:#}"))),
    };
    if let Some(e) = failure {
        a.finish().await;
        b.finish().await;
        return Err(e);
    }
    Ok(Trial::new(ctx, a, token, b, history))
}
