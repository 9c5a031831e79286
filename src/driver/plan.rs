//! Operations as plans: a multi-step operation (CreateNetwork, CreateEndpoint, Join, publish)
//! is a list of named steps, each with its undo, run by one executor. On the first failure the
//! executor undoes the steps that were done, newest first, and returns that failure; an undo
//! that fails is logged and does not replace it, because the caller must learn why the
//! operation failed, not why the rollback was incomplete.
//!
//! Steps share one context `C`, owned by the operation: it borrows the driver's collaborators
//! and carries what later steps and undos need (whether the bridge was created decides whether
//! its undo deletes it). Steps are plain functions of the context, so a plan is data that can
//! be listed ([`Plan::step_names`]) and failed step by step in tests ([`testing`]).
//!
//! A plan's future must run to its end for the undos to happen: an operation whose caller may
//! drop it half-way (a client hanging up) runs its plan on a task of its own.

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;

/// What a step or an undo returns; it borrows the context for as long as it runs.
pub(crate) type StepFuture<'c, E> = Pin<Box<dyn Future<Output = Result<(), E>> + Send + 'c>>;

/// A step's action or its undo.
pub(crate) type StepFn<C, E> = for<'c> fn(&'c mut C) -> StepFuture<'c, E>;

/// The error a step fails with when a test asked it to ([`testing::fail_at`]). Operations
/// make their error type `From` it, so the injected failure travels the real error path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("injected failure at step {step:?} of {plan}")]
pub(crate) struct InjectedFailure {
    pub plan: &'static str,
    pub step: &'static str,
}

struct Step<C, E> {
    name: &'static str,
    run: StepFn<C, E>,
    undo: Option<StepFn<C, E>>,
}

/// A named list of steps over the context `C`, failing with `E`.
pub(crate) struct Plan<C, E> {
    name: &'static str,
    steps: Vec<Step<C, E>>,
}

impl<C, E> Plan<C, E>
where
    C: Send,
    E: Display + From<InjectedFailure>,
{
    /// An empty plan; `name` is the operation (`CreateNetwork`), for logs and tests.
    pub(crate) fn new(name: &'static str) -> Self {
        Self {
            name,
            steps: Vec::new(),
        }
    }

    /// Append a step whose effect `undo` reverses (best-effort) if a later step fails.
    pub(crate) fn step(
        mut self,
        name: &'static str,
        run: StepFn<C, E>,
        undo: StepFn<C, E>,
    ) -> Self {
        self.push(name, run, Some(undo));
        self
    }

    /// Append a step that leaves nothing to undo (a check, or the last step).
    pub(crate) fn step_without_undo(mut self, name: &'static str, run: StepFn<C, E>) -> Self {
        self.push(name, run, None);
        self
    }

    fn push(&mut self, name: &'static str, run: StepFn<C, E>, undo: Option<StepFn<C, E>>) {
        // Tests and logs find a step by its name.
        debug_assert!(
            self.steps.iter().all(|s| s.name != name),
            "plan {} has two steps named {name:?}",
            self.name
        );
        self.steps.push(Step { name, run, undo });
    }

    /// The operation's name.
    #[cfg(test)]
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// The steps' names, in the order they run.
    #[cfg(test)]
    pub(crate) fn step_names(&self) -> Vec<&'static str> {
        self.steps.iter().map(|s| s.name).collect()
    }

    /// Run the steps in order. On the first failure, undo the done steps in reverse and
    /// return that failure.
    pub(crate) async fn run(self, ctx: &mut C) -> Result<(), E> {
        for (done, step) in self.steps.iter().enumerate() {
            if let Err(e) = self.run_step(step, ctx).await {
                tracing::debug!(plan = self.name, step = step.name, error = %e, "step failed; undoing the steps done");
                self.undo(&self.steps[..done], ctx).await;
                return Err(e);
            }
        }
        Ok(())
    }

    async fn run_step(&self, step: &Step<C, E>, ctx: &mut C) -> Result<(), E> {
        #[cfg(any(test, feature = "testing"))]
        if let Some(injected) = testing::enter(self.name, step.name) {
            return Err(injected.into());
        }
        (step.run)(ctx).await
    }

    async fn undo(&self, done: &[Step<C, E>], ctx: &mut C) {
        for step in done.iter().rev() {
            let Some(undo) = step.undo else { continue };
            if let Err(e) = undo(ctx).await {
                tracing::warn!(plan = self.name, step = step.name, error = %e, "rollback: cannot undo step");
            }
        }
    }
}

/// Failure injection for tests: make a chosen step of whatever plans a future runs fail, and
/// list the steps it ran. Scoped to the future (a tokio task-local), so tests running at once
/// do not see each other's injections; plans run on other tasks are not covered.
#[cfg(any(test, feature = "testing"))]
// Only the crate's own tests inject; the `testing` feature builds it for the executor's hook.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod testing {
    use std::future::Future;
    use std::sync::Mutex;

    use super::InjectedFailure;

    /// One step of one plan.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct StepRef {
        pub plan: &'static str,
        pub step: &'static str,
    }

    struct Scope {
        fail_at: Option<StepRef>,
        entered: Mutex<Vec<StepRef>>,
    }

    tokio::task_local! {
        static SCOPE: Scope;
    }

    /// Run `fut`, listing every step its plans began, in order.
    pub(crate) async fn record<T>(fut: impl Future<Output = T>) -> (T, Vec<StepRef>) {
        scoped(None, fut).await
    }

    /// Run `fut` with `target` failing (an [`InjectedFailure`]) instead of running; also lists
    /// the steps begun, the last being `target` if it was reached.
    pub(crate) async fn fail_at<T>(
        target: StepRef,
        fut: impl Future<Output = T>,
    ) -> (T, Vec<StepRef>) {
        scoped(Some(target), fut).await
    }

    async fn scoped<T>(
        fail_at: Option<StepRef>,
        fut: impl Future<Output = T>,
    ) -> (T, Vec<StepRef>) {
        let scope = Scope {
            fail_at,
            entered: Mutex::new(Vec::new()),
        };
        SCOPE
            .scope(scope, async {
                let out = fut.await;
                let entered =
                    SCOPE.with(|s| s.entered.lock().map(|v| v.clone()).unwrap_or_default());
                (out, entered)
            })
            .await
    }

    /// Called by the executor as a step begins: the failure to return instead, if injected.
    pub(super) fn enter(plan: &'static str, step: &'static str) -> Option<InjectedFailure> {
        let here = StepRef { plan, step };
        SCOPE
            .try_with(|s| {
                if let Ok(mut v) = s.entered.lock() {
                    v.push(here);
                }
                (s.fail_at == Some(here)).then_some(InjectedFailure { plan, step })
            })
            .ok()
            .flatten()
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
