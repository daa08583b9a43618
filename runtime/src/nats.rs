//! Connecting to NATS the same way in every component.

use secrecy::ExposeSecret;

use crate::config::NatsConfig;

/// Connects to NATS as `name` (shown in the server's connection list). A server that is down
/// does not stop start-up: the client keeps retrying in the background and calls fail until it
/// is back.
pub async fn connect(
    config: &NatsConfig,
    name: &str,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .request_timeout(Some(config.request_timeout))
        .connection_timeout(
            config
                .request_timeout
                .min(std::time::Duration::from_secs(5)),
        );
    let auth = config.auth.expose_secret();
    if !auth.is_empty() {
        options = match auth.split_once(':') {
            Some((user, password)) => {
                options.user_and_password(user.to_owned(), password.to_owned())
            }
            None => options.token(auth.to_owned()),
        };
    }
    let servers: Vec<async_nats::ServerAddr> = config
        .url
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    options.connect(servers).await
}
