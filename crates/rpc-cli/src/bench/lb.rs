//! `rpc bench lb`: what the full client stack costs. The same server is called through a bare
//! `Channel` and through timeout + rate limit + `LbChannel` (P2C over peak-EWMA, a circuit breaker
//! and outlier detection per endpoint), alternating rounds in one run. A third subject,
//! the bare channel with the stack's deadline, shows how much of the difference is the
//! connection's per-call deadline timer rather than the stack itself.

use super::{
    report::{print_rpc_rows, RoundArgs},
    rpc::{drive, spawn_server, BenchClient, BenchRequest, Rounds, Shape},
};
use crate::CliResult;
use rpc_core::{
    layer::{RateLimitLayer, TimeoutLayer},
    Channel, Request, Response, Status,
};
use rpc_lb::{LbChannel, StaticList};
use std::{sync::Arc, time::Duration};
use tower::{util::BoxCloneSyncService, ServiceBuilder};

#[derive(clap::Args)]
pub(crate) struct LbBenchArgs {
    #[command(flatten)]
    run: RoundArgs,
}

/// (scenario, calls in flight).
const SCENARIOS: [(&str, usize); 2] = [("latency", 1), ("pipelined", 64)];

type Stack = BoxCloneSyncService<Request, Response, Status>;

pub(crate) async fn run(args: LbBenchArgs) -> CliResult {
    let (mut child, addr) = spawn_server("rpc").await?;
    let addr = addr.to_string();
    let warmup = Duration::from_secs_f64(args.run.warmup);
    let measured = Duration::from_secs_f64(args.run.seconds);
    let bare: Stack = BoxCloneSyncService::new(Channel::connect(addr.clone()).await?);
    // The same deadline as the stack's timeout, on a bare channel: separates what a deadline
    // costs the connection (its expiry bookkeeping) from what the stack's own types cost.
    let deadline: Stack =
        BoxCloneSyncService::new(Channel::builder(addr.clone()).timeout(Duration::from_secs(5)).connect().await?);
    let balanced = LbChannel::builder(StaticList::new([addr])).connect().await?;
    let full: Stack = BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(TimeoutLayer::new(Duration::from_secs(5)))
            // High enough never to refuse: the bench measures the limiter's cost, not its effect.
            .layer(RateLimitLayer::per_second(u32::MAX))
            .service(balanced),
    );
    let request = Arc::new(BenchRequest::sample());
    let mut rows = Vec::new();
    for (scenario, in_flight) in SCENARIOS {
        let (mut channel, mut with_deadline, mut stack) = (Rounds::default(), Rounds::default(), Rounds::default());
        for round in 0..args.run.rounds.max(1) {
            let mut subjects = [(&bare, &mut channel), (&deadline, &mut with_deadline), (&full, &mut stack)];
            // In reverse every other round, so no subject always runs first.
            if round % 2 == 1 {
                subjects.reverse();
            }
            for (subject, rounds) in subjects {
                let expected = request.clone();
                let client = BenchClient::new(subject.clone());
                let shape = Shape { per_client: in_flight, warmup, measured };
                rounds.add(
                    drive(vec![client], shape, child.id(), move |c| {
                        let expected = expected.clone();
                        async move { c.echo(BenchRequest::clone(&expected)).await.is_ok_and(|echo| echo == *expected) }
                    })
                    .await,
                );
            }
        }
        let baseline = channel.baseline("channel");
        rows.push(channel.row(scenario, "channel", &baseline));
        rows.push(with_deadline.row(scenario, "deadline", &baseline));
        rows.push(stack.row(scenario, "lb-stack", &baseline));
    }
    print_rpc_rows(&rows, args.run.json);
    let _ = child.kill().await;
    Ok(())
}
