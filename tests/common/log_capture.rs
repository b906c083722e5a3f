//! Captures what the application logs, so a test can search it (for a
//! secret that must never be logged).

use std::io::Write;
use std::sync::{Arc, Mutex};

/// Everything logged in this process since [`LogCapture::install`].
#[derive(Clone)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// Installs the process's subscriber at `debug` (`trace` for Chronicle
    /// itself). nextest runs every test in a process of its own, so each
    /// test that calls this captures only its own run.
    pub fn install() -> Self {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        tracing_subscriber::fmt()
            .with_env_filter(
                "debug,chronicle=trace,chronicle_projections=trace,chronicle_nats=trace",
            )
            .with_writer(move || Sink(writer.clone()))
            .with_ansi(false)
            .try_init()
            .expect("no other subscriber in this test process");
        Self(buffer)
    }

    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}
