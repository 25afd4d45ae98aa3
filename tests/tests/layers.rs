//! The core's resilience layers over real sockets: timeouts with deadline propagation, retries,
//! rate and concurrency limits, and per-method circuit breaking.

mod common;
mod lb_support;

use futures_util::StreamExt;
use lb_support::{start_node, start_node_with, NodeClient};
use rpc_core::{
    layer::{ConcurrencyLimitLayer, RateLimitLayer, RetryLayer, RetryPolicy, TimeoutLayer},
    Channel, Code,
};
use rpc_lb::{BreakerConfig, CircuitBreakerLayer};
use std::{sync::atomic::Ordering, time::Duration};
use tower::ServiceBuilder;

#[tokio::test]
async fn client_timeout_travels_to_the_server_and_cancels_the_handler() {
    let (server, lab) = common::start_lab().await;
    let mut events = lab.events.subscribe();
    let channel = Channel::builder(server.local_addr().to_string()).connect().await.unwrap();
    let client = common::LabClient::new(
        ServiceBuilder::new().layer(TimeoutLayer::new(Duration::from_millis(300))).service(channel),
    );
    let remaining = client.remaining_ms().await.unwrap().expect("the server sees a deadline");
    assert!(remaining <= 300 && remaining > 0, "{remaining}");
    let status = client.hang("bounded".into()).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    common::expect_event(&mut events, "cancelled:bounded").await;
}

#[tokio::test]
async fn server_timeout_bounds_a_slow_handler() {
    let (server, _ctl) = start_node_with(0, TimeoutLayer::new(Duration::from_millis(50))).await;
    let client = NodeClient::new(Channel::connect(server.local_addr().to_string()).await.unwrap());
    assert_eq!(client.work(5_000).await.unwrap_err().code(), Code::DeadlineExceeded);
    assert_eq!(client.work(0).await.unwrap(), 0);
}

#[tokio::test]
async fn retries_idempotent_calls_and_leaves_others_alone() {
    let (server, ctl) = start_node(0).await;
    let channel = Channel::connect(server.local_addr().to_string()).await.unwrap();
    let policy = RetryPolicy { max_attempts: 3, ..RetryPolicy::default() };
    let client = NodeClient::new(ServiceBuilder::new().layer(RetryLayer::new(policy)).service(channel));

    ctl.fail_next.store(2, Ordering::SeqCst);
    assert_eq!(client.id().await.unwrap(), 0, "idempotent: two failures retried away");
    assert_eq!(ctl.seen.load(Ordering::SeqCst), 3);

    ctl.fail_next.store(1, Ordering::SeqCst);
    assert_eq!(client.work(0).await.unwrap_err().code(), Code::Unavailable, "not idempotent: not retried");
    assert_eq!(ctl.seen.load(Ordering::SeqCst), 4);

    ctl.fail_next.store(10, Ordering::SeqCst);
    assert_eq!(client.id().await.unwrap_err().code(), Code::Unavailable, "gives up after 3 attempts");
    assert_eq!(ctl.seen.load(Ordering::SeqCst), 7);
}

#[tokio::test]
async fn calls_that_never_started_are_retried_even_when_not_idempotent() {
    let (server, _ctl) = start_node(0).await;
    let addr = server.local_addr().to_string();
    server.shutdown(Duration::ZERO).await.unwrap();
    let channel = Channel::builder(addr).connect_lazy();
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = ServiceBuilder::new()
        .map_request({
            let attempts = attempts.clone();
            move |request| {
                attempts.fetch_add(1, Ordering::SeqCst);
                request
            }
        })
        .service(channel);
    let client = NodeClient::new(ServiceBuilder::new().layer(RetryLayer::default()).service(counted));
    // Nothing listens: every attempt is refused before reaching a handler, so all three are
    // made although `work` is not idempotent.
    let status = client.work(0).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.not_started());
    assert_eq!(attempts.load(Ordering::SeqCst), 3, "every attempt the policy allows was made");
}

#[tokio::test]
async fn a_non_idempotent_call_a_server_refused_before_running_it_is_retried() {
    // One call at a time and no queue: a second call at once is refused, not run.
    let (server, ctl) = start_node_with(0, ConcurrencyLimitLayer::new(1).queue(0)).await;
    let addr = server.local_addr().to_string();
    let plain = NodeClient::new(Channel::connect(addr.clone()).await.unwrap());
    let retried = NodeClient::new(
        ServiceBuilder::new()
            .layer(RetryLayer::new(RetryPolicy { max_attempts: 50, ..RetryPolicy::default() }))
            .service(Channel::connect(addr).await.unwrap()),
    );
    let busy = tokio::spawn(async move { plain.work(300).await });
    lb_support::eventually("the first call runs", || ctl.seen.load(Ordering::SeqCst) == 1).await;
    // Refused with RESOURCE_EXHAUSTED, marked not started on the wire, so retried until the
    // first call is done and there is room.
    retried.work(0).await.expect("retried until the server had room");
    busy.await.unwrap().unwrap();
    assert_eq!(ctl.seen.load(Ordering::SeqCst), 2, "refused attempts never reached the handler");
    assert_eq!(ctl.served(), 2, "each call ran exactly once");
}

#[tokio::test]
async fn rate_limit_per_caller_keeps_a_noisy_caller_from_starving_a_quiet_one() {
    let (server, _ctl) = start_node_with(0, RateLimitLayer::per_second(5).burst(5).per_caller()).await;
    let addr = server.local_addr().to_string();
    let noisy = NodeClient::new(Channel::builder(addr.clone()).caller("noisy").connect().await.unwrap());
    let quiet = NodeClient::new(Channel::builder(addr).caller("quiet").connect().await.unwrap());
    let mut refused = 0;
    for _ in 0..20 {
        if let Err(status) = noisy.id().await {
            assert_eq!(status.code(), Code::ResourceExhausted);
            assert!(status.message().contains("noisy"), "{status}");
            refused += 1;
        }
    }
    assert!(refused >= 10, "{refused}");
    assert_eq!(quiet.id().await.unwrap(), 0, "the quiet caller has its own limit");
}

#[tokio::test]
async fn concurrency_limit_sheds_calls_beyond_running_plus_queued() {
    let (server, ctl) = start_node_with(0, ConcurrencyLimitLayer::new(2).queue(2)).await;
    ctl.held.store(true, Ordering::SeqCst);
    let client = NodeClient::new(Channel::connect(server.local_addr().to_string()).await.unwrap());
    let mut calls: futures_util::stream::FuturesUnordered<_> = (0..10)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.work(0).await })
        })
        .collect();
    // While the admitted calls are held, the first six answers are the refusals.
    for _ in 0..6 {
        let status = calls.next().await.unwrap().unwrap().unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status}");
    }
    assert_eq!(ctl.served(), 0, "2 run, 2 wait, all held");
    ctl.release();
    while let Some(call) = calls.next().await {
        call.unwrap().expect("the 4 admitted calls run once released");
    }
    assert_eq!(ctl.served(), 4);
}

#[tokio::test]
async fn method_breaker_on_a_client_fails_fast_once_open() {
    let (server, ctl) = start_node(0).await;
    ctl.fail_next.store(1000, Ordering::SeqCst);
    let channel = Channel::connect(server.local_addr().to_string()).await.unwrap();
    let config = BreakerConfig { min_calls: 5, open_for: Duration::from_secs(30), ..BreakerConfig::default() };
    let client = NodeClient::new(ServiceBuilder::new().layer(CircuitBreakerLayer::new(config)).service(channel));
    for _ in 0..5 {
        assert!(!client.id().await.unwrap_err().not_started(), "reached the server");
    }
    let status = client.id().await.unwrap_err();
    assert!(status.not_started() && status.message().contains("circuit open"), "{status}");
    assert_eq!(ctl.seen.load(Ordering::SeqCst), 5, "the open circuit kept the call local");
    assert!(
        client.work(0).await.unwrap_err().message().contains("failed on purpose"),
        "other methods have their own breaker"
    );
}

#[tokio::test]
async fn a_service_layer_wraps_its_service_alone_and_stock_tower_middleware_fits() {
    let lab = common::LabImpl::default();
    let mut events = lab.events.subscribe();
    let ctl = std::sync::Arc::new(lb_support::Ctl::default());
    let server = rpc_core::Server::builder()
        .add_service_with(tower::timeout::TimeoutLayer::new(Duration::from_millis(100)), common::LabServer::new(lab))
        .add_service(lb_support::NodeServer::new(lb_support::Instance(ctl)))
        .start("127.0.0.1:0")
        .await
        .unwrap();
    let channel = Channel::connect(server.local_addr().to_string()).await.unwrap();
    let lab = common::LabClient::new(channel.clone());
    let cut = tokio::time::timeout(Duration::from_secs(5), lab.hang("layered".into()))
        .await
        .expect("the service's own timeout layer cuts its call")
        .unwrap_err();
    assert_eq!(cut.code(), Code::DeadlineExceeded, "tower's Elapsed becomes a status: {cut}");
    assert!(cut.message().contains("timeout layer"), "{cut}");
    common::expect_event(&mut events, "cancelled:layered").await;
    // The other service on the listener has no such timeout.
    assert_eq!(NodeClient::new(channel).work(300).await.unwrap(), 0);
}

#[tokio::test]
async fn stock_tower_load_shedding_on_a_server_refuses_calls_as_not_started() {
    let stack = ServiceBuilder::new()
        .layer(tower::util::MapErrLayer::new(rpc_core::Status::from_box_error))
        .layer(tower::load_shed::LoadShedLayer::new())
        .layer(tower::limit::ConcurrencyLimitLayer::new(1));
    let (server, ctl) = start_node_with(0, stack).await;
    ctl.held.store(true, Ordering::SeqCst);
    let client = NodeClient::new(Channel::connect(server.local_addr().to_string()).await.unwrap());
    let held = tokio::spawn({
        let client = client.clone();
        async move { client.work(0).await }
    });
    tokio::time::timeout(Duration::from_secs(5), async {
        while ctl.seen.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the first call reaches the server");
    let shed = client.work(0).await.unwrap_err();
    assert_eq!(shed.code(), Code::ResourceExhausted, "tower's Overloaded becomes a status: {shed}");
    assert!(shed.not_started(), "shed before it ran, so safe to retry elsewhere: {shed}");
    ctl.release();
    assert_eq!(held.await.unwrap().unwrap(), 0);
}
