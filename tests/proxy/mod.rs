//! A TCP proxy on a loopback port that a test can cut: every connection through it is dropped
//! at once, both ways, without a WebSocket close frame, as a network failure would drop it.
//! What the server wrote into the proxy and the client has not read is lost, like bytes in
//! flight on a real network.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The proxy: accepts on its own port and forwards each connection to `target`.
pub struct CutProxy {
    /// Where clients connect.
    pub address: SocketAddr,
    pipes: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: JoinHandle<()>,
}

impl CutProxy {
    /// Starts forwarding to `target`.
    pub async fn start(target: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let address = listener.local_addr().expect("a bound address");
        let pipes: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let acceptor = tokio::spawn({
            let pipes = Arc::clone(&pipes);
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    let Ok(mut server) = TcpStream::connect(target).await else { continue };
                    let pipe = tokio::spawn(async move {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    });
                    pipes.lock().expect("not poisoned").push(pipe);
                }
            }
        });
        CutProxy { address, pipes, acceptor }
    }

    /// `ws://<proxy>/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.address)
    }

    /// Drops every connection through the proxy, both sockets, with whatever they still held.
    pub fn cut(&self) {
        for pipe in self.pipes.lock().expect("not poisoned").drain(..) {
            pipe.abort();
        }
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.cut();
        self.acceptor.abort();
    }
}
