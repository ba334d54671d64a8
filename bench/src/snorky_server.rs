//! The server under test: Snorky's own `Server` with `pubsub` on the frontend and
//! `pubsub_backend` on the backend, default configuration (queue bounds, pings, metrics and all),
//! in its own process and runtime.

use snorky::registry::ServiceRegistry;
use snorky::service::{AnyService, Side};
use snorky::services::pubsub::{PubSubBackend, PubSubService};
use snorky::{Server, ServerConfig};

use crate::ServeArgs;

/// Runs Snorky until the parent goes away or a signal arrives (then shuts down gracefully).
pub fn main(args: &ServeArgs) -> Result<(), String> {
    crate::sys::raise_fd_limit();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        builder.worker_threads(threads);
    }
    let runtime = builder.enable_all().build().map_err(|err| format!("runtime: {err}"))?;
    runtime.block_on(async {
        crate::sys::serve_alloc_stats(args.alloc_stats);
        let pubsub = PubSubService::new("pubsub");
        let backend = PubSubBackend::new("pubsub_backend", &pubsub);
        let frontend =
            ServiceRegistry::new(Side::Frontend, vec![AnyService::PubSub(pubsub)]).map_err(|e| e.to_string())?;
        let backend =
            ServiceRegistry::new(Side::Backend, vec![AnyService::PubSubBackend(backend)]).map_err(|e| e.to_string())?;
        let config = ServerConfig {
            frontend_address: args.frontend.clone(),
            backend_address: args.backend.clone(),
            api_key: Some(args.key.clone()),
            allowed_origins: vec!["*".into()],
            shutdown_timeout: 2.0,
            close_timeout: 1.0,
            ..ServerConfig::default()
        };
        let server = Server::new(config, frontend, backend).map_err(|e| e.to_string())?;
        let server = server.bind().await.map_err(|e| e.to_string())?;
        let ws = server.frontend_addr().map_err(|e| e.to_string())?;
        let backend = server.backend_addr().map_err(|e| e.to_string())?;
        println!("READY ws=ws://{ws}/ws backend=http://{backend}/backend");
        server.run(crate::sys::parent_gone_or_signal()).await.map_err(|e| e.to_string())
    })?;
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}
