//! Liveness probes: a [`Probe`] asks an accept loop or a connection worker
//! to answer, which proves that it, and the runtime under it, still make
//! progress. The watchdog withholds its ping while one does not answer.

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

/// Asks a running server's accept loop, or a connection worker, to answer,
/// proving that it and the runtime under it still make progress.
#[derive(Debug, Clone)]
pub struct Probe(Probed);

#[derive(Debug, Clone)]
enum Probed {
    AcceptLoop(mpsc::Sender<Question>),
    Worker(Handle),
}

impl Probe {
    /// A probe of the runtime behind `handle`: it answers while that
    /// runtime runs tasks.
    pub(crate) fn worker(handle: Handle) -> Probe {
        Probe(Probed::Worker(handle))
    }

    /// A probe of a loop, and the questions the loop must answer. The probe
    /// answers only while the loop answers them.
    pub(crate) fn accept_loop() -> (Probe, Questions) {
        // A few in flight: the watchdog and readiness ask one at a time.
        let (tx, rx) = mpsc::channel(4);
        (Probe(Probed::AcceptLoop(tx)), Questions(rx))
    }

    /// Whether it answered; false once the server or worker has stopped.
    pub async fn check(&self) -> bool {
        match &self.0 {
            Probed::AcceptLoop(sender) => {
                let (tx, rx) = oneshot::channel();
                sender.send(Question(tx)).await.is_ok() && rx.await.is_ok()
            }
            Probed::Worker(handle) => handle.spawn(async {}).await.is_ok(),
        }
    }
}

/// The loop's end of its probes.
#[derive(Debug)]
pub(crate) struct Questions(mpsc::Receiver<Question>);

impl Questions {
    /// The next question; `None` once every probe is gone.
    pub(crate) async fn next(&mut self) -> Option<Question> {
        self.0.recv().await
    }
}

/// One probe waiting for its answer.
#[derive(Debug)]
pub(crate) struct Question(oneshot::Sender<()>);

impl Question {
    pub(crate) fn answer(self) {
        // The probe may have given up waiting; nothing to tell it then.
        let _ = self.0.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_worker_probe_fails_once_its_runtime_has_stopped() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let probe = Probe::worker(runtime.handle().clone());
        let thread = std::thread::spawn(move || {
            runtime.block_on(async {
                let _ = stopped.await;
            });
        });
        assert!(probe.check().await, "a running worker did not answer");
        stop.send(()).unwrap();
        tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap();
        assert!(!probe.check().await, "a stopped worker answered");
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_probe_answers_only_while_the_loop_answers() {
        let (probe, mut questions) = Probe::accept_loop();
        let answering = tokio::spawn(async move {
            let question = questions.next().await.expect("a question");
            question.answer();
            questions
        });
        assert!(probe.check().await);
        let questions = answering.await.unwrap();
        // A loop that is stuck (holds its questions but answers none)
        // keeps the probe waiting: the watchdog's timeout decides.
        let stuck = tokio::time::timeout(std::time::Duration::from_secs(60), probe.check()).await;
        assert!(stuck.is_err(), "a stuck loop answered: {stuck:?}");
        // A loop that has ended fails the probe at once.
        drop(questions);
        assert!(!probe.check().await, "an ended loop answered");
    }
}
