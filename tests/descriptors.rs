//! The open-file limit a server starts with: every connection is a file descriptor, so the
//! server raises a low soft limit to the hard one. Its own test binary: it changes the process's
//! limit.

mod common;

use common::TestServer;
use rlimit::Resource;
use serde_json::json;

#[tokio::test]
async fn a_server_raises_a_low_soft_open_file_limit_to_the_hard_one() {
    let (_, hard) = Resource::NOFILE.get().expect("the limit is readable");
    let low = hard.min(512);
    Resource::NOFILE.set(low, hard).expect("lowering the soft limit is always allowed");
    let server = TestServer::start().await;
    let (soft, _) = Resource::NOFILE.get().expect("the limit is readable");
    assert_eq!(soft, hard, "the soft limit was {low}, the hard one {hard}");
    let mut client = server.connect().await;
    client.subscribe(json!("served")).await;
}
