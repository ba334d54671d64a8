//! The server under test: Snorky's own `Server` with `pubsub` on the frontend and
//! `pubsub_backend` on the backend, default configuration (queue bounds, pings, metrics and all),
//! in its own process and runtime. `--mode datasync` and `--mode chat` serve those services
//! instead (the DataSync and Chat scenarios), `--mode isolation` PubSub beside DataSync.
//! `--broker` makes it one node of several sharing a Redis (the cluster scenario).

use snorky::datasync::{DataSyncBackend, DataSyncService, Dealer, Limits};
use snorky::registry::ServiceRegistry;
use snorky::service::{AnyService, Side};
use snorky::services::chat::ChatService;
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
        let pubsub_backend = PubSubBackend::new("pubsub_backend", &pubsub);
        let (frontend, backend) = match args.mode.as_str() {
            "pubsub" => (vec![AnyService::PubSub(pubsub)], vec![AnyService::PubSubBackend(pubsub_backend)]),
            "datasync" => {
                let dealers = vec![
                    Dealer::simple_field("tasks_by_owner", "Task", "owner"),
                    Dealer::broadcast("all_notes", "Note"),
                ];
                let datasync =
                    DataSyncService::with_limits("datasync", dealers, Limits::default()).map_err(|e| e.to_string())?;
                let backend = DataSyncBackend::new("datasync_backend", &datasync);
                (vec![AnyService::DataSync(datasync)], vec![AnyService::DataSyncBackend(backend)])
            }
            "isolation" => {
                let dealers = vec![
                    Dealer::simple_field("tasks_by_owner", "Task", "owner"),
                    Dealer::filter("filtered_tasks", "Task"),
                ];
                let datasync =
                    DataSyncService::with_limits("datasync", dealers, Limits::default()).map_err(|e| e.to_string())?;
                let backend = DataSyncBackend::new("datasync_backend", &datasync);
                (
                    vec![AnyService::DataSync(datasync), AnyService::PubSub(pubsub)],
                    vec![AnyService::DataSyncBackend(backend), AnyService::PubSubBackend(pubsub_backend)],
                )
            }
            "chat" => (
                vec![AnyService::Chat(ChatService::new("chat")), AnyService::PubSub(pubsub)],
                vec![AnyService::PubSubBackend(pubsub_backend)],
            ),
            other => return Err(format!("unknown mode {other:?} (pubsub, datasync, chat, isolation)")),
        };
        let frontend = ServiceRegistry::new(Side::Frontend, frontend).map_err(|e| e.to_string())?;
        let backend = ServiceRegistry::new(Side::Backend, backend).map_err(|e| e.to_string())?;
        let config = ServerConfig {
            frontend_address: args.frontend.clone(),
            backend_address: args.backend.clone(),
            api_key: Some(args.key.clone()),
            allowed_origins: vec!["*".into()],
            shutdown_timeout: 2.0,
            close_timeout: 1.0,
            token_secret: args.token_secret.clone(),
            broker: args.broker.clone(),
            node_name: args.node_name.clone(),
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
