//! Assembles a running gateway from a validated config: the store, the key table and its sync,
//! usage flushing, the lifecycle jobs, the admin listener and the proxy listener. The one place
//! both planes meet.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{self, Config, ConfigError, RateLimitBackend, RestartOnly};
use crate::control::admin::{Admin, Tokens};
use crate::control::keys::KeyService;
use crate::control::leaks::endpoints::Endpoints;
use crate::control::leaks::github::{KeySource, Verifier};
use crate::control::leaks::Leaks;
use crate::control::lifecycle::LifecycleJobs;
use crate::control::quota_leases::QuotaLeases;
use crate::control::quota_warnings::Warner;
use crate::control::replicas::{self, Replica};
use crate::control::store::{self, Actor, KeyStore};
use crate::control::sync::KeySync;
use crate::control::usage::UsageFlusher;
use crate::core::clock::{system_clock, Clock};
use crate::core::environment::Environment;
use crate::core::secret::Hasher;
use crate::proxy::intercept::Intercept;
use crate::proxy::limits::{LeaseLink, QuotaWarnings};
use crate::proxy::server;
use crate::proxy::shared_limits::{RateClock, RedisSettings, SharedLimits};
use crate::proxy::state::Shared;
use crate::proxy::table::KeyTable;
use crate::proxy::tls::Tls;
use crate::telemetry::traces::Traces;
use crate::telemetry::Metrics;

/// A gateway serving on its listeners until [`Gateway::shutdown`].
pub struct Gateway {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub shared: Arc<Shared>,
    pub store: Arc<dyn KeyStore>,
    /// Stops the proxy listener, and turns `/readyz` to 503.
    drain: watch::Sender<bool>,
    /// Stops the admin listener, last.
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    proxy_server: JoinHandle<()>,
    admin_server: JoinHandle<()>,
    flusher: Arc<UsageFlusher>,
    sync: Arc<KeySync>,
    /// This gateway's row in the store's list of replicas.
    pub replica: Arc<Replica>,
    lifecycle: LifecycleJobs,
    /// The quota leases' task, when quotas are leased from the store: given back at drain.
    quota_leases: Option<Arc<QuotaLeases>>,
    /// True once the key table has loaded.
    loaded: watch::Receiver<bool>,
    /// The proxy listener's TLS, whose certificate a reload replaces.
    tls: Option<Tls>,
    /// What its listeners, store, limiter and jobs were built from at start, which a reload
    /// does not change.
    started: RestartOnly,
}

/// What a reload could not apply, and what it applied that the log warns of.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// The settings that take effect at the next restart (see [`RestartOnly`]), sorted.
    pub restart_needed: Vec<String>,
    /// The environments the running config had routes for and the new one has none for: their
    /// keys get 404 from now on.
    pub environments_unrouted: Vec<Environment>,
    /// The routes (by name) that had `permissions` and have none now: any valid key of their
    /// environment passes them.
    pub routes_opened: Vec<String>,
}

/// What a gateway needs beside its config: secrets from the environment, and the clock.
pub struct Options {
    pub hasher: Hasher,
    /// The admin API's bearer token; without one, everything under `/v1` answers 401.
    pub admin_token: Option<String>,
    /// The read-only admin token, if the config names one.
    pub admin_read_token: Option<String>,
    pub clock: Clock,
}

impl Options {
    /// The pepper and the admin token from the environment variables the config names.
    pub fn from_env(config: &Config) -> anyhow::Result<Options> {
        let admin_token = std::env::var(&config.admin.token_env)
            .ok()
            .filter(|t| !t.is_empty());
        if admin_token.is_none() {
            tracing::warn!(
                variable = %config.admin.token_env,
                "no admin token in the environment: the admin API under /v1 refuses every request"
            );
        }
        let admin_read_token = config.admin.read_token_env.as_ref().and_then(|name| {
            let token = std::env::var(name).ok().filter(|t| !t.is_empty());
            if token.is_none() {
                tracing::warn!(variable = %name, "admin.read_token_env names a variable that is not set: no read-only token");
            }
            token
        });
        if admin_token.is_some() && admin_token == admin_read_token {
            anyhow::bail!("the read-only admin token equals the admin token: set two different tokens");
        }
        let signing = admin_token.as_deref().or(admin_read_token.as_deref());
        if let Some(warning) = crate::control::replicas::credential::short_token_warning(config, signing) {
            tracing::warn!("{warning}");
        }
        Ok(Options {
            hasher: hasher_from_env(config)?,
            admin_token,
            admin_read_token,
            clock: system_clock(),
        })
    }
}

/// Reads the pepper from the environment variable the config names. A named but unset
/// variable is an error: every key would hash differently and fail.
pub fn hasher_from_env(config: &Config) -> anyhow::Result<Hasher> {
    match &config.store.pepper_env {
        None => Ok(Hasher::unkeyed()),
        Some(name) => match std::env::var(name) {
            Ok(pepper) if !pepper.is_empty() => Ok(Hasher::with_pepper(pepper.as_bytes())),
            _ => anyhow::bail!("store.pepper_env names {name}, but that environment variable is not set"),
        },
    }
}

impl Gateway {
    /// Binds both listeners and starts serving; the key table loads in the background.
    ///
    /// A store that does not exist is an error: creating one is the operator's act. A store
    /// that exists but is locked or unreadable is not: the key sync tries it until it loads
    /// (see [`KeySync::load`]). Until then `/readyz` answers 503 with the reason and the proxy
    /// answers 503 with `Retry-After`, so a probe keeps traffic away and nothing is admitted
    /// against an empty table. [`Gateway::loaded`] waits for the load.
    pub async fn start(config: Config, options: Options) -> anyhow::Result<Gateway> {
        let Options {
            hasher,
            admin_token,
            admin_read_token,
            clock,
        } = options;
        let problems = config::serving_problems(&config);
        if !problems.is_empty() {
            return Err(ConfigError { problems }.into());
        }
        let advertise_from_env = replicas::advertise_from_env(&config)?;
        let config = Arc::new(config);
        let metrics = Metrics::new();
        let tls = tls(&config, &metrics, clock.now())?;
        metrics.config_loaded(clock.now());
        let store = store::open_later(&config.store.url)?;
        let keys = Arc::new(KeyTable::default());
        let mut shared = Shared::new(
            config.clone(),
            keys.clone(),
            hasher.clone(),
            metrics.clone(),
            clock.clone(),
        );
        let traces =
            Traces::start(&config.tracing).context("cannot set up the trace exporter ([tracing])")?;
        shared = shared.with_traces(traces);
        let (quota_warnings, quota_notes) = QuotaWarnings::new(&config.quotas.warn_at);
        // Without Redis, quotas are leased from the store, whose counter sees the warnings.
        let (lease_link, lease_wants) = LeaseLink::new(config.quotas.lease_block);
        let leasing = matches!(config.rate_limit.backend, RateLimitBackend::Local);
        if leasing {
            shared = shared.with_quota_leases(lease_link);
        } else if !config.quotas.warn_at.is_empty() {
            shared = shared.with_quota_warnings(quota_warnings);
        }
        let warner = Arc::new(Warner::new(
            store.clone(),
            metrics.clone(),
            clock.clone(),
            config.lifecycle.webhook.is_some(),
        ));
        let shared_limits = shared_limits(&config, &metrics, clock.clone()).await?;
        if let Some(limits) = &shared_limits {
            shared = shared.with_shared_limits(limits.clone());
        }
        // The snapshot is saved at most every ten sync intervals (within 1 s to 1 min): a
        // million keys take a second or two to write.
        let snapshot_every = (config.store.sync_interval * 10).clamp(
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(60),
        );
        let sync = Arc::new(
            KeySync::new(
                store.clone(),
                keys,
                shared.sync.clone(),
                metrics.clone(),
                clock.clone(),
            )
            .with_snapshot(config.store.snapshot.clone(), snapshot_every)
            .with_customers(shared.customers.clone()),
        );
        let leaks = Leaks::new(store.clone(), hasher.clone(), clock.clone(), config.leaks.action)
            .with_webhooks(config.lifecycle.webhook.is_some())
            .with_metrics(metrics.clone());
        if let Some(endpoints) = leak_endpoints(&config.leaks, &leaks, &sync, &clock).await? {
            shared = shared.with_intercept(endpoints);
        }
        let shared = Arc::new(shared);
        let quota_leases = leasing.then(|| {
            Arc::new(QuotaLeases::new(
                store.clone(),
                shared.clone(),
                warner.clone(),
                &config.quotas,
                clock.clone(),
            ))
        });

        let proxy = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot listen on {} (server.listen)", config.server.listen))?;
        let admin = TcpListener::bind(config.admin.listen)
            .await
            .with_context(|| format!("cannot listen on {} (admin.listen)", config.admin.listen))?;
        let proxy_addr = proxy.local_addr()?;
        let admin_addr = admin.local_addr()?;

        let (drain, _) = watch::channel(false);
        let (stop, _) = watch::channel(false);
        let stopped = |stop: &watch::Sender<bool>| {
            let mut rx = stop.subscribe();
            async move {
                let _ = rx.wait_for(|stopped| *stopped).await;
            }
        };
        let flusher = Arc::new(
            UsageFlusher::new(
                store.clone(),
                shared.usage.clone(),
                metrics.clone(),
                clock.clone(),
            )
            .with_analytics(shared.analytics(), config.usage.retention),
        );
        let lifecycle = LifecycleJobs::new(
            &config.lifecycle,
            store.clone(),
            KeyService::new(store.clone(), hasher.clone(), clock.clone(), Actor::Lifecycle),
            clock.clone(),
            metrics.clone(),
        )?;
        let (loaded_tx, loaded) = watch::channel(false);
        let mut tasks = vec![
            tokio::spawn(sync.clone().run(config.store.sync_interval, loaded_tx)),
            tokio::spawn(flusher.clone().run(config.store.usage_flush_interval)),
            tokio::spawn(housekeeping(shared.clone())),
            tokio::spawn(warner.clone().run(quota_notes)),
        ];
        let replica = Arc::new(
            Replica::new(shared.clone(), store.clone(), sync.applied(), admin_addr.port())
                .advertising(advertise_from_env),
        );
        tasks.push(tokio::spawn(replica.clone().run()));
        if let Some(leases) = &quota_leases {
            tasks.push(tokio::spawn(leases.clone().run(lease_wants)));
            tasks.push(tokio::spawn(leases.clone().sweep()));
        }
        tasks.extend(lifecycle.spawn());
        tasks.extend(shared_limits.map(|limits| tokio::spawn(limits.watch())));
        let admin_server = Admin::new(
            shared.clone(),
            KeyService::new(store.clone(), hasher, clock, Actor::AdminApi(None)),
            sync.clone(),
            Tokens {
                write: admin_token,
                read: admin_read_token,
            },
        )
        .with_drain(drain.subscribe())
        .with_usage(flusher.clone())
        .with_leaks(leaks)
        .with_replica(replica.clone());
        let admin_server = match &quota_leases {
            Some(leases) => admin_server.with_quota_leases(leases.clone()),
            None => admin_server,
        };
        let admin_server = tokio::spawn(Arc::new(admin_server).serve(admin, stopped(&stop)));
        let proxy_server = tokio::spawn(server::serve(proxy, shared.clone(), tls.clone(), stopped(&drain)));
        tracing::info!(%proxy_addr, %admin_addr, "keygate serving");
        Ok(Gateway {
            proxy_addr,
            admin_addr,
            shared,
            store,
            drain,
            stop,
            tasks,
            proxy_server,
            admin_server,
            flusher,
            sync,
            replica,
            lifecycle,
            quota_leases,
            loaded,
            tls,
            started: RestartOnly::of(&config),
        })
    }

    /// Reads the config file again and applies it (SIGHUP). A file that is not valid, that
    /// would serve nothing, or whose TLS pair would not serve, is refused and logged, and the
    /// running config stays.
    pub fn reload_file(&self, path: &Path) -> Result<Reloaded, ConfigError> {
        match config::load_to_serve(path) {
            Ok(config) => self.reload(config),
            Err(error) => {
                tracing::error!(file = %path.display(), "config file refused at reload");
                Err(self.refused(error))
            }
        }
    }

    /// Logs and counts a refused reload.
    fn refused(&self, error: ConfigError) -> ConfigError {
        tracing::error!(problems = %error, "config reload refused; the running config stays");
        let now = self.shared.clock.now();
        self.shared.metrics.config_reloaded(false, now);
        error
    }

    /// Replaces routes, upstreams, limits and the TLS certificate (read again from its files,
    /// so a certificate replaced on disk is served to new connections); an upstream whose pool
    /// settings are unchanged keeps its connections. A TLS pair that would not serve refuses
    /// the whole reload, and so does a config with no route or no upstream. What needs a
    /// restart (listen addresses, the store, the limiter's backend: [`RestartOnly`]) is
    /// compared with the config the gateway started with, what it actually runs, and each
    /// change is logged as a warning; so is an environment left without routes, or a route
    /// left without permissions (see [`dropped`]).
    pub fn reload(&self, config: Config) -> Result<Reloaded, ConfigError> {
        let now = self.shared.clock.now();
        let problems = config::serving_problems(&config);
        if !problems.is_empty() {
            return Err(self.refused(ConfigError { problems }));
        }
        let pair = match &self.tls {
            Some(_) => config::tls_pair(&config, now.as_second()).map_err(|e| self.refused(e))?,
            None => None,
        };
        let restart_needed = self.started.changed(&RestartOnly::of(&config));
        for setting in &restart_needed {
            tracing::warn!(
                setting = setting.as_str(),
                "changed in the config; it takes effect at the next restart"
            );
        }
        let running = self.shared.snapshot.load().config.clone();
        let (environments_unrouted, routes_opened) = dropped(&running, &config);
        for environment in &environments_unrouted {
            tracing::warn!(
                %environment,
                "the reloaded config has no route for this environment: its keys now get 404"
            );
        }
        for route in &routes_opened {
            tracing::warn!(
                route,
                "the reloaded config has no permissions for this route: any valid key of its environment passes it"
            );
        }
        if let (Some(tls), Some(pair)) = (&self.tls, &pair) {
            tls.replace(pair);
            self.shared.metrics.tls_certificate_expires(pair.not_after);
        }
        self.shared.reload(Arc::new(config));
        self.shared.metrics.config_reloaded(true, now);
        tracing::info!("config reloaded");
        Ok(Reloaded {
            restart_needed,
            environments_unrouted,
            routes_opened,
        })
    }

    /// Waits until the key table has loaded for the first time.
    pub async fn loaded(&self) {
        let mut loaded = self.loaded.clone();
        let _ = loaded.wait_for(|loaded| *loaded).await;
    }

    /// Pulls key changes now rather than at the next interval (tests, admin actions).
    pub async fn sync_now(&self) -> anyhow::Result<()> {
        let sync = self.sync.clone();
        tokio::task::spawn_blocking(move || sync.sync_once()).await??;
        Ok(())
    }

    /// Runs the idle sweep now rather than at the next interval (tests). A no-op without
    /// `lifecycle.idle_expiry`, or while another gateway on the store holds the lifecycle lease.
    pub async fn sweep_now(&self) {
        self.lifecycle.sweep_now().await;
    }

    /// Attempts the lifecycle webhooks due now (tests). A no-op without `lifecycle.webhook`.
    pub async fn deliver_webhooks_now(&self) {
        self.lifecycle.deliver_now().await;
    }

    /// Writes counted usage now.
    pub async fn flush_usage(&self) {
        let flusher = self.flusher.clone();
        let _ = tokio::task::spawn_blocking(move || flusher.flush()).await;
    }

    /// Stops accepting, lets in-flight requests finish (up to `server.shutdown_grace`) and the
    /// webhook attempt in flight be recorded, and writes the last usage counts. The admin
    /// listener stays up until the end, its `/readyz` answering 503, so that a load balancer
    /// sees the replica leave.
    pub async fn shutdown(self) {
        let _ = self.drain.send(true);
        let _ = self.proxy_server.await;
        if let Some(leases) = &self.quota_leases {
            leases.drain().await;
        }
        if let Some(traces) = &self.shared.traces {
            traces.shutdown().await;
        }
        self.lifecycle.stop().await;
        for task in &self.tasks {
            task.abort();
        }
        // Awaited, so their hold on the store ends before this returns: a process that opens
        // the store next (a restart, `keygate store`) does not find it busy.
        for task in self.tasks {
            let _ = task.await;
        }
        let flusher = self.flusher.clone();
        let _ = tokio::task::spawn_blocking(move || flusher.flush()).await;
        // Its heartbeat stopped above: the row goes now, not three intervals later. A store
        // that does not answer soon does not hold the stop: the row is dropped in 3 s anyway.
        let replica = self.replica.clone();
        let leaving = tokio::task::spawn_blocking(move || replica.leave());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), leaving).await;
        let _ = self.stop.send(true);
        let _ = self.admin_server.await;
        tracing::info!("keygate stopped");
    }
}

/// The proxy listener's TLS, when configured, serving the pair its files hold now.
fn tls(config: &Config, metrics: &Metrics, now: jiff::Timestamp) -> anyhow::Result<Option<Tls>> {
    let Some(pair) = config::tls_pair(config, now.as_second())? else {
        return Ok(None);
    };
    metrics.tls_certificate_expires(pair.not_after);
    Ok(Some(Tls::new(&pair)?))
}

/// What `next` drops of what `running` serves, short of refusing it: the environments left
/// without a route, and the routes (by name) left without permissions. Applied, not refused: a
/// valid file is the operator's intent, and retiring an environment's routes must not need a
/// restart; but a file cut short drops its tail silently, so each is logged as a warning.
fn dropped(running: &Config, next: &Config) -> (Vec<Environment>, Vec<String>) {
    let routed = |config: &Config| {
        config
            .routes
            .iter()
            .map(|route| route.environment)
            .collect::<std::collections::BTreeSet<_>>()
    };
    let still = routed(next);
    let environments = routed(running)
        .into_iter()
        .filter(|e| !still.contains(e))
        .collect();
    let opened = next
        .routes
        .iter()
        .filter(|route| route.permissions.is_none())
        .filter(|route| {
            running
                .routes
                .iter()
                .any(|old| old.name == route.name && old.permissions.is_some())
        })
        .map(|route| route.name.clone())
        .collect();
    (environments, opened)
}

/// The `[leaks]` endpoints on the proxy listener, when the config turns one on. GitHub's keys
/// are read now: a file must be readable, a URL that does not answer is logged (an alert
/// signed with a key not read yet has them read again). GitLab's token is read from its
/// environment variable, which must be set.
async fn leak_endpoints(
    settings: &config::Leaks,
    leaks: &Leaks,
    sync: &Arc<KeySync>,
    clock: &Clock,
) -> anyhow::Result<Option<Arc<dyn Intercept>>> {
    if settings.github.is_none() && settings.gitlab.is_none() {
        return Ok(None);
    }
    let mut endpoints = Endpoints::new(leaks.clone(), sync.clone(), settings.max_body);
    if let Some(github) = &settings.github {
        let source = match &github.keys {
            config::GithubKeys::Url(url) => KeySource::Url(url.parse().context("leaks.github.keys_url")?),
            config::GithubKeys::File(path) => KeySource::File(path.clone()),
        };
        let verifier = Verifier::new(source, clock.clone()).context("leaks.github")?;
        match (verifier.load().await, &github.keys) {
            (Ok(keys), _) => tracing::info!(keys, path = %github.path, "GitHub secret scanning endpoint on"),
            // A file is this machine's: one that cannot be read would refuse every alert.
            (Err(error), config::GithubKeys::File(_)) => {
                return Err(anyhow::Error::new(error).context("leaks.github.keys_file"))
            }
            (Err(error), config::GithubKeys::Url(_)) => tracing::warn!(
                %error,
                "cannot read GitHub's secret scanning keys yet; tried again on the first alert"
            ),
        }
        endpoints = endpoints.with_github(github.path.clone(), verifier);
    }
    if let Some(gitlab) = &settings.gitlab {
        let token = std::env::var(&gitlab.token_env).ok().filter(|t| !t.is_empty());
        let Some(token) = token else {
            anyhow::bail!(
                "leaks.gitlab.token_env names {}, but that environment variable is not set",
                gitlab.token_env
            );
        };
        tracing::info!(path = %gitlab.path, "GitLab token revocation endpoints on");
        endpoints = endpoints.with_gitlab(&gitlab.path, &token);
    }
    Ok(Some(Arc::new(endpoints)))
}

/// The Redis limiter of `rate_limit.backend = "redis"`, given a moment to connect so the first
/// requests are shared; a Redis that does not answer yet is no reason not to start (requests
/// are limited locally, visibly, until it does).
/// Quota periods run on the gateway's `clock` (a test's manual one moves them); rate buckets on
/// Redis's own, so replicas need not agree on the time for them.
async fn shared_limits(
    config: &Config,
    metrics: &Metrics,
    clock: Clock,
) -> anyhow::Result<Option<Arc<SharedLimits>>> {
    let RateLimitBackend::Redis { url, prefix, timeout } = &config.rate_limit.backend else {
        return Ok(None);
    };
    let settings = RedisSettings {
        url,
        prefix,
        timeout: *timeout,
    };
    let limits = SharedLimits::new(&settings, metrics.rate_limit_fallback.clone())
        .context("cannot set up the Redis rate-limit backend (rate_limit.redis_url)")?
        .with_clock(clock, RateClock::Redis);
    let limits = Arc::new(limits);
    if !limits.connect(std::time::Duration::from_secs(2)).await {
        tracing::warn!("Redis rate-limit backend does not answer yet: limiting locally until it does");
    }
    Ok(Some(limits))
}

/// Trims per-IP and per-key limiter state now and then, so it tracks only recent clients.
async fn housekeeping(shared: Arc<Shared>) {
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        ticker.tick().await;
        let snapshot = shared.snapshot.load();
        snapshot.ip_throttle.forget_idle();
        snapshot.verify_throttle.forget_idle();
        let keys = shared.keys.clone();
        shared.key_limits.retain(|seq| keys.contains(seq));
    }
}
