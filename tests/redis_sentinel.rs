//! RedisBackend through Redis Sentinel (`redis-server --sentinel`) watching
//! a master started by the tests: the conformance suite.
#![cfg(feature = "redis")]

mod conformance;
mod redis_support;
mod support;

use std::sync::LazyLock;

use redis_support::{Deployment, RedisHarness, SentinelGroup};

static GROUP: LazyLock<SentinelGroup> = LazyLock::new(SentinelGroup::start);

fn harness() -> RedisHarness {
    RedisHarness::new(
        Deployment::Sentinel {
            sentinel: GROUP.sentinel.url(),
        },
        vec![GROUP.master.url()],
    )
}

mod sentinel {
    crate::conformance_suite!(async { crate::harness() });
}
