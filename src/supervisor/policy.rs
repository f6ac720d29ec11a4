//! What happens to a hash job when its run ends: started again at once, after a
//! backoff, or not at all. A pure function of the handler's policy and the job's state,
//! so it is tested by tables here; the supervisor carries out its answer (timers,
//! events, the helper).

use crate::config::{Handler, Restart};
use std::time::Duration;

/// What the job does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Its field is gone, or nothing runs here now (a replica, paused): forget it.
    Remove,
    /// A restart was asked while it ran (a new value, RESTART): start again at once.
    Start,
    /// Not to run again (`restart = never`, or `on-failure` after a success).
    Exited,
    /// Gave up: `max-failures` failed runs in a row.
    Failed,
    /// Start again after this delay.
    Backoff(Duration),
}

/// The job's state when a run ends.
#[derive(Debug, Clone, Copy)]
pub struct Ended {
    /// The job's field is still there and this node runs jobs.
    pub wanted: bool,
    /// A restart was asked while the run ran.
    pub restart_pending: bool,
    /// Failed runs in a row before this one.
    pub failures: u32,
    /// This run failed (a non-zero exit, a signal, a spawn error).
    pub failed: bool,
    /// How long it ran.
    pub ran_for: Duration,
    /// Its exit (the code, or minus the signal) if it ended by itself: `None` if it
    /// never ran or was stopped for hanging (`heartbeat-ms`).
    pub exit: Option<i64>,
}

/// What comes next, and the failures in a row counting this run. A run that lasted
/// `stable-after-ms` starts the count again (so it is not a crash loop), and the delay
/// doubles per failure in a row from `backoff-initial-ms` to `backoff-max-ms`. An exit
/// code in `no-restart-exit-codes` ends the job: `failed` (`exited` for code 0).
pub fn after_run(h: &Handler, e: Ended) -> (Next, u32) {
    if !e.wanted {
        return (Next::Remove, e.failures);
    }
    if e.restart_pending {
        return (Next::Start, e.failures);
    }
    let mut failures = if e.ran_for >= h.stable_after {
        0
    } else {
        e.failures
    };
    failures += u32::from(e.failed);
    if h.no_restart(e.exit) {
        // `no-restart-exit-codes`: whatever `restart` says.
        let next = if e.failed { Next::Failed } else { Next::Exited };
        return (next, failures);
    }
    let restart = match h.restart {
        Restart::Never => false,
        Restart::OnFailure => e.failed,
        Restart::Always => true,
    };
    let next = if !restart {
        Next::Exited
    } else if e.failed && h.max_failures > 0 && failures >= h.max_failures {
        Next::Failed
    } else {
        Next::Backoff(h.backoff(failures.max(1)))
    };
    (next, failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handler(restart: Restart, max_failures: u32) -> Handler {
        Handler {
            name: "h".into(),
            command: vec!["x".into()],
            program_as_written: None,
            env: Vec::new(),
            cwd: None,
            restart,
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_millis(1000),
            stable_after: Duration::from_secs(10),
            max_failures,
            stop_signal: 15,
            stop_signal_name: "TERM".into(),
            stop_grace: Duration::from_secs(5),
            timeout: Duration::ZERO,
            log_lines: None,
            pool: 0,
            max_requests: 0,
            heartbeat: Duration::ZERO,
            no_restart_exit_codes: Vec::new(),
            limits: Default::default(),
        }
    }

    #[test]
    fn what_follows_a_run() {
        use Next::*;
        use Restart::*;
        let ms = Duration::from_millis;
        let short = ms(100);
        let long = ms(10_000);
        // (restart, max-failures, wanted, restart pending, failures before, failed,
        //  ran for) -> (next, failures after)
        let table = [
            // The field is gone, or nothing runs here: forget the job, whatever else.
            (Always, 0, false, true, 3, true, short, Remove, 3),
            // A restart asked while it ran: at once, the count untouched.
            (Always, 0, true, true, 3, true, short, Start, 3),
            (Never, 0, true, true, 0, false, short, Start, 0),
            // restart = always: a success too, after the first delay.
            (Always, 0, true, false, 0, false, short, Backoff(ms(250)), 0),
            // Failures in a row double the delay, up to backoff-max-ms.
            (Always, 0, true, false, 0, true, short, Backoff(ms(250)), 1),
            (Always, 0, true, false, 1, true, short, Backoff(ms(500)), 2),
            (Always, 0, true, false, 2, true, short, Backoff(ms(1000)), 3),
            (
                Always,
                0,
                true,
                false,
                9,
                true,
                short,
                Backoff(ms(1000)),
                10,
            ),
            // A run of stable-after-ms starts the count again.
            (Always, 0, true, false, 9, true, long, Backoff(ms(250)), 1),
            (Always, 0, true, false, 9, false, long, Backoff(ms(250)), 0),
            // max-failures in a row: give up; 0 means never.
            (Always, 3, true, false, 1, true, short, Backoff(ms(500)), 2),
            (Always, 3, true, false, 2, true, short, Failed, 3),
            (OnFailure, 1, true, false, 0, true, short, Failed, 1),
            (Always, 3, true, false, 2, true, long, Backoff(ms(250)), 1),
            // on-failure: a success ends it, a failure restarts it.
            (OnFailure, 0, true, false, 2, false, short, Exited, 2),
            (
                OnFailure,
                0,
                true,
                false,
                0,
                true,
                short,
                Backoff(ms(250)),
                1,
            ),
            // never: it ends either way (failures still counted).
            (Never, 0, true, false, 0, false, short, Exited, 0),
            (Never, 3, true, false, 2, true, short, Exited, 3),
        ];
        for (i, (restart, max, wanted, pending, before, failed, ran_for, next, after)) in
            table.into_iter().enumerate()
        {
            let e = Ended {
                wanted,
                restart_pending: pending,
                failures: before,
                failed,
                ran_for,
                exit: Some(i64::from(failed)),
            };
            assert_eq!(
                after_run(&handler(restart, max), e),
                (next, after),
                "row {i}: {e:?}"
            );
        }
    }

    #[test]
    fn an_exit_code_in_no_restart_exit_codes_ends_the_job() {
        use Next::*;
        use Restart::*;
        let (short, long) = (Duration::from_millis(100), Duration::from_secs(10));
        // (restart, max-failures, exit, failures before, ran for, restart pending) ->
        // (next, failures after); the handler's no-restart-exit-codes are [0, 3].
        let table = [
            // Code 3: failed at once, whatever restart and max-failures say.
            (Always, 0, Some(3), 0, short, false, Failed, 1),
            (Always, 5, Some(3), 1, short, false, Failed, 2),
            (OnFailure, 0, Some(3), 0, long, false, Failed, 1),
            (Never, 0, Some(3), 0, short, false, Failed, 1),
            // Code 0: exited, not restarted (restart = always would).
            (Always, 0, Some(0), 2, short, false, Exited, 2),
            // Other codes, a signal, a hung run (no exit): the policy as before.
            (
                Always,
                0,
                Some(4),
                0,
                short,
                false,
                Backoff(Duration::from_millis(250)),
                1,
            ),
            (
                Always,
                0,
                Some(-3),
                0,
                short,
                false,
                Backoff(Duration::from_millis(250)),
                1,
            ),
            (
                Always,
                0,
                None,
                1,
                short,
                false,
                Backoff(Duration::from_millis(500)),
                2,
            ),
            // A restart asked while it ran comes first (the code was its answer to TERM).
            (Always, 0, Some(3), 0, short, true, Start, 0),
        ];
        for (i, (restart, max, exit, before, ran_for, pending, next, after)) in
            table.into_iter().enumerate()
        {
            let e = Ended {
                wanted: true,
                restart_pending: pending,
                failures: before,
                failed: exit != Some(0),
                ran_for,
                exit,
            };
            let h = Handler {
                no_restart_exit_codes: vec![0, 3],
                ..handler(restart, max)
            };
            let got = after_run(&h, e);
            assert_eq!(got, (next, after), "row {i}: {e:?}");
        }
    }
}
