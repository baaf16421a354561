//! Integration-test support: real servers and stores on loopback.

use std::io::Write as _;

/// The variable that makes Redis tests mandatory (set by `.ci/run`).
pub const REDIS_REQUIRED: &str = "TOWER_REDIS_REQUIRED";
/// The variable naming the Redis to use; default `redis://127.0.0.1:6379/`.
pub const REDIS_URL: &str = "TOWER_REDIS_URL";

/// A connection to the test Redis, or `None` (after saying so on the terminal) when Redis is
/// not reachable and not required. Panics when it is required but unreachable.
pub async fn redis_connection(test: &str) -> Option<redis::aio::MultiplexedConnection> {
    let url = std::env::var(REDIS_URL).unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_string());
    let required = std::env::var(REDIS_REQUIRED).is_ok_and(|v| v == "1" || v == "true");
    let attempt = async {
        let client = redis::Client::open(url.as_str())?;
        let connect = client.get_multiplexed_async_connection();
        match tokio::time::timeout(std::time::Duration::from_secs(3), connect).await {
            Ok(conn) => conn,
            Err(_) => Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "connect timed out",
            ))),
        }
    };
    match attempt.await {
        Ok(conn) => Some(conn),
        Err(err) if required => {
            panic!("{REDIS_REQUIRED} is set but Redis at {url} is unreachable: {err}")
        }
        Err(err) => {
            // Written straight to the terminal: the test harness captures `eprintln!`.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: Redis at {url} is unreachable ({err}); set {REDIS_REQUIRED}=1 to make this a failure"
            );
            None
        }
    }
}
