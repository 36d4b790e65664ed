//! Mock-fleet start-up, written once for everything that runs mock backends: the demo and
//! the scenario (in-process, on the endpoint addresses of a policy) and the integration
//! tests (on fresh loopback ports, through `tests/support`). A mock is a name and a
//! service time (latency ± jitter); everything else keeps [`MockConfig`]'s defaults.

use crate::mock::{MockBackend, MockConfig};
use std::net::SocketAddr;
use std::time::Duration;

/// One mock backend to start.
#[derive(Debug, Clone)]
pub struct MockSpec {
    pub config: MockConfig,
    /// Where it listens; port 0: a fresh port.
    pub addr: SocketAddr,
}

impl MockSpec {
    /// A mock named `name` that answers after `latency` ± `jitter`, on a fresh loopback port.
    pub fn new(name: impl Into<String>, latency: Duration, jitter: Duration) -> Self {
        MockSpec {
            config: MockConfig {
                name: name.into(),
                latency,
                jitter,
                ..MockConfig::default()
            },
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }

    /// The same mock on `addr` (an endpoint address written in a policy).
    pub fn at(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    pub async fn start(self) -> std::io::Result<MockBackend> {
        MockBackend::start(self.config, self.addr).await
    }
}

/// Start every mock, in order. The first that cannot bind ends the start-up with its error.
pub async fn start(specs: impl IntoIterator<Item = MockSpec>) -> std::io::Result<Vec<MockBackend>> {
    let mut mocks = Vec::new();
    for spec in specs {
        mocks.push(spec.start().await?);
    }
    Ok(mocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fleet_starts_on_fresh_ports_and_names_each_mock() {
        let fleet = start([
            MockSpec::new("a", Duration::ZERO, Duration::ZERO),
            MockSpec::new("b", Duration::from_millis(1), Duration::ZERO),
        ])
        .await
        .expect("start");
        assert_eq!(fleet.len(), 2);
        assert_ne!(fleet[0].addr(), fleet[1].addr());
        assert!(fleet
            .iter()
            .all(|m| m.addr().ip().is_loopback() && m.addr().port() != 0));
        // A second mock on an address already taken is an error, not a silent success.
        let taken = MockSpec::new("c", Duration::ZERO, Duration::ZERO).at(fleet[0].addr());
        assert!(start([taken]).await.is_err());
    }
}
