//! Streams query results as an HTTP body or a file with flat memory: a task
//! reads rows from Postgres as they arrive and renders them into chunks of
//! about 64 KiB, handed over through a channel of a few chunks. A slow
//! reader slows the query down (backpressure); a reader that goes away stops it.

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Postgres, QueryBuilder};
use tokio::sync::mpsc;

const CHUNK_BYTES: usize = 64 * 1024;
const CHUNKS_IN_FLIGHT: usize = 4;

/// Renders one row into the output buffer.
pub type Render = Box<dyn FnMut(&PgRow, &mut Vec<u8>) -> anyhow::Result<()> + Send>;

/// Runs `query` and streams `header` followed by every rendered row.
pub fn stream_rows(
    pool: PgPool,
    mut query: QueryBuilder<'static, Postgres>,
    header: Option<Bytes>,
    mut render: Render,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let (sender, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(CHUNKS_IN_FLIGHT);
    tokio::spawn(async move {
        let mut rows = query.build().fetch(&pool);
        let mut buffer = Vec::with_capacity(CHUNK_BYTES + 4096);
        if let Some(header) = header {
            buffer.extend_from_slice(&header);
        }
        loop {
            let failure = match rows.try_next().await {
                Ok(Some(row)) => render(&row, &mut buffer).err(),
                Ok(None) => break,
                Err(err) => Some(anyhow::Error::new(err).context("reading rows")),
            };
            if let Some(err) = failure {
                tracing::error!(error = ?err, "streamed query failed; the response is cut short");
                let _ = sender
                    .send(Err(std::io::Error::other("the stream failed")))
                    .await;
                return;
            }
            if buffer.len() >= CHUNK_BYTES {
                let chunk = Bytes::from(std::mem::replace(
                    &mut buffer,
                    Vec::with_capacity(CHUNK_BYTES + 4096),
                ));
                if sender.send(Ok(chunk)).await.is_err() {
                    return; // the reader went away
                }
            }
        }
        if !buffer.is_empty() {
            let _ = sender.send(Ok(Bytes::from(buffer))).await;
        }
    });
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
}
