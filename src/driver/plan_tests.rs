//! The executor against a recording world shaped like CreateNetwork: bridge, firewall, pools,
//! record.

use std::collections::BTreeSet;
use std::sync::Mutex;

use super::testing::{self, StepRef};
use super::{InjectedFailure, Plan, StepFuture};

#[derive(Debug, thiserror::Error)]
enum TestError {
    #[error("{0} failed")]
    Step(&'static str),
    #[error(transparent)]
    Injected(#[from] InjectedFailure),
}

/// The collaborators: what exists, and every call made, in order.
#[derive(Default)]
struct World {
    things: Mutex<BTreeSet<&'static str>>,
    log: Mutex<Vec<String>>,
}

impl World {
    fn with(things: &[&'static str]) -> Self {
        let w = Self::default();
        w.things.lock().unwrap().extend(things);
        w
    }
    fn note(&self, s: impl Into<String>) {
        self.log.lock().unwrap().push(s.into());
    }
    fn add(&self, thing: &'static str) -> bool {
        self.things.lock().unwrap().insert(thing)
    }
    fn del(&self, thing: &'static str) {
        self.things.lock().unwrap().remove(thing);
    }
    fn things(&self) -> Vec<&'static str> {
        self.things.lock().unwrap().iter().copied().collect()
    }
    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

/// What the operation carries: borrowed collaborators, values for later steps, and which step
/// or undo fails for real.
struct Ctx<'a> {
    world: &'a World,
    bridge_created: Option<bool>,
    fail: Option<&'static str>,
    fail_undo: Option<&'static str>,
}

impl<'a> Ctx<'a> {
    fn new(world: &'a World) -> Self {
        Self {
            world,
            bridge_created: None,
            fail: None,
            fail_undo: None,
        }
    }
    fn act(&self, step: &'static str, thing: &'static str) -> Result<(), TestError> {
        self.world.note(format!("do {step}"));
        if self.fail == Some(step) {
            return Err(TestError::Step(step));
        }
        self.world.add(thing);
        Ok(())
    }
    fn revert(&self, step: &'static str, thing: &'static str) -> Result<(), TestError> {
        self.world.note(format!("undo {step}"));
        if self.fail_undo == Some(step) {
            return Err(TestError::Step(step));
        }
        self.world.del(thing);
        Ok(())
    }
}

fn ensure_bridge<'c>(c: &'c mut Ctx<'_>) -> StepFuture<'c, TestError> {
    Box::pin(async move {
        c.world.note("do ensure bridge");
        if c.fail == Some("ensure bridge") {
            return Err(TestError::Step("ensure bridge"));
        }
        tokio::task::yield_now().await;
        c.bridge_created = Some(c.world.add("bridge"));
        Ok(())
    })
}

fn delete_bridge<'c>(c: &'c mut Ctx<'_>) -> StepFuture<'c, TestError> {
    Box::pin(async move {
        c.world.note(format!(
            "undo ensure bridge (created: {:?})",
            c.bridge_created
        ));
        if c.fail_undo == Some("ensure bridge") {
            return Err(TestError::Step("ensure bridge"));
        }
        // Only a bridge we made is ours to delete.
        if c.bridge_created == Some(true) {
            c.world.del("bridge");
        }
        Ok(())
    })
}

fn create_network<'a>() -> Plan<Ctx<'a>, TestError> {
    Plan::new("CreateNetwork")
        .step("ensure bridge", ensure_bridge, delete_bridge)
        .step(
            "add firewall network",
            |c| {
                Box::pin(async move {
                    // A value from step 1 reaches step 2.
                    c.world
                        .note(format!("firewall sees created: {:?}", c.bridge_created));
                    c.act("add firewall network", "rules")
                })
            },
            |c| Box::pin(async move { c.revert("add firewall network", "rules") }),
        )
        .step(
            "bind pools",
            |c| Box::pin(async move { c.act("bind pools", "binding") }),
            |c| Box::pin(async move { c.revert("bind pools", "binding") }),
        )
        .step_without_undo("write record", |c| {
            Box::pin(async move { c.act("write record", "record") })
        })
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn steps_run_in_order_and_nothing_is_undone_on_success() {
    let world = World::default();
    let mut ctx = Ctx::new(&world);
    let plan = create_network();
    assert_eq!(plan.name(), "CreateNetwork");
    assert_eq!(
        plan.step_names(),
        [
            "ensure bridge",
            "add firewall network",
            "bind pools",
            "write record"
        ]
    );
    plan.run(&mut ctx).await.unwrap();
    assert_eq!(
        world.log(),
        strings(&[
            "do ensure bridge",
            "firewall sees created: Some(true)",
            "do add firewall network",
            "do bind pools",
            "do write record",
        ])
    );
    assert_eq!(world.things(), ["binding", "bridge", "record", "rules"]);
    assert_eq!(
        ctx.bridge_created,
        Some(true),
        "the caller keeps the context"
    );
}

#[tokio::test]
async fn a_failure_undoes_only_the_done_steps_newest_first() {
    let world = World::default();
    let mut ctx = Ctx::new(&world);
    ctx.fail = Some("bind pools");
    let err = create_network().run(&mut ctx).await.unwrap_err();
    assert!(matches!(err, TestError::Step("bind pools")), "{err}");
    assert_eq!(
        world.log(),
        strings(&[
            "do ensure bridge",
            "firewall sees created: Some(true)",
            "do add firewall network",
            "do bind pools",
            "undo add firewall network",
            "undo ensure bridge (created: Some(true))",
        ])
    );
    assert!(world.things().is_empty(), "{:?}", world.things());
}

#[tokio::test]
async fn a_failed_undo_is_passed_over_and_the_original_error_returned() {
    let world = World::default();
    let mut ctx = Ctx::new(&world);
    ctx.fail = Some("write record");
    ctx.fail_undo = Some("add firewall network");
    let err = create_network().run(&mut ctx).await.unwrap_err();
    assert!(matches!(err, TestError::Step("write record")), "{err}");
    // The bridge is still deleted after the firewall's undo failed.
    assert_eq!(
        world.log()[5..],
        strings(&[
            "undo bind pools",
            "undo add firewall network",
            "undo ensure bridge (created: Some(true))",
        ])
    );
    assert_eq!(world.things(), ["rules"]);
}

#[tokio::test]
async fn step_ones_value_reaches_step_two_and_step_ones_undo() {
    // The bridge exists already: step 1 learns it did not create it, and its undo keeps it.
    let world = World::with(&["bridge"]);
    let mut ctx = Ctx::new(&world);
    ctx.fail = Some("add firewall network");
    create_network().run(&mut ctx).await.unwrap_err();
    assert_eq!(
        world.log(),
        strings(&[
            "do ensure bridge",
            "firewall sees created: Some(false)",
            "do add firewall network",
            "undo ensure bridge (created: Some(false))",
        ])
    );
    assert_eq!(world.things(), ["bridge"]);
}

#[tokio::test]
async fn a_failing_first_step_undoes_nothing() {
    let world = World::default();
    let mut ctx = Ctx::new(&world);
    ctx.fail = Some("ensure bridge");
    create_network().run(&mut ctx).await.unwrap_err();
    assert_eq!(world.log(), strings(&["do ensure bridge"]));
    assert!(world.things().is_empty());
}

#[tokio::test]
async fn record_lists_the_steps_begun() {
    let world = World::default();
    let mut ctx = Ctx::new(&world);
    let (res, steps) = testing::record(create_network().run(&mut ctx)).await;
    res.unwrap();
    let names: Vec<_> = steps.iter().map(|s| (s.plan, s.step)).collect();
    assert_eq!(
        names,
        [
            ("CreateNetwork", "ensure bridge"),
            ("CreateNetwork", "add firewall network"),
            ("CreateNetwork", "bind pools"),
            ("CreateNetwork", "write record"),
        ]
    );
    // Outside a scope, nothing is recorded or injected.
    let world = World::default();
    create_network().run(&mut Ctx::new(&world)).await.unwrap();
}

#[tokio::test]
async fn failing_each_step_in_turn_leaves_nothing() {
    let names = create_network().step_names();
    assert_eq!(names.len(), 4);
    for (i, &step) in names.iter().enumerate() {
        let world = World::default();
        let mut ctx = Ctx::new(&world);
        let target = StepRef {
            plan: "CreateNetwork",
            step,
        };
        let (res, entered) = testing::fail_at(target, create_network().run(&mut ctx)).await;
        let err = res.unwrap_err();
        assert!(
            matches!(&err, TestError::Injected(f) if f.step == step),
            "{step}: {err}"
        );
        assert_eq!(entered.last(), Some(&target), "{step}");
        assert_eq!(entered.len(), i + 1, "{step}");
        assert!(
            world.things().is_empty(),
            "failing {step} left {:?}",
            world.things()
        );
        // The injected step never ran; the done ones were undone newest first.
        let log = world.log();
        assert!(!log.contains(&format!("do {step}")), "{step}: {log:?}");
        let undos: Vec<_> = log.iter().filter(|l| l.starts_with("undo ")).collect();
        let expected: Vec<_> = names[..i]
            .iter()
            .rev()
            .filter(|n| **n != "write record")
            .collect();
        assert_eq!(undos.len(), expected.len(), "{step}: {log:?}");
        for (u, n) in undos.iter().zip(expected) {
            assert!(u.starts_with(&format!("undo {n}")), "{step}: {log:?}");
        }
    }
}

#[tokio::test]
async fn injection_in_one_task_does_not_reach_another() {
    let target = StepRef {
        plan: "CreateNetwork",
        step: "bind pools",
    };
    let w1 = World::default();
    let w2 = World::default();
    let mut c1 = Ctx::new(&w1);
    let mut c2 = Ctx::new(&w2);
    let injected = testing::fail_at(target, create_network().run(&mut c1));
    let other = create_network().run(&mut c2);
    let ((r1, _), r2) = tokio::join!(injected, other);
    assert!(r1.is_err());
    r2.unwrap();
    assert!(w1.things().is_empty());
    assert_eq!(w2.things().len(), 4);
}

#[test]
fn a_plan_run_is_send_when_its_context_is() {
    // Handlers run on a multi-threaded runtime, so the driver's plans must be Send.
    fn assert_send<T: Send>(_: &T) {}
    let world = World::default();
    let mut ctx = Ctx::new(&world);
    let run = create_network().run(&mut ctx);
    assert_send(&run);
}
