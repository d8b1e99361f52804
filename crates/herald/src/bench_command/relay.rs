//! The floor under every latency figure: publish-to-delivery through a relay that stores
//! nothing and only copies bytes, over the same two loopback connections a broker has (one from
//! the publisher, which gets an ack per event as every measured publisher does, one to the
//! subscriber), with the same client, pacer and recorder as every system measured
//! (`paced.rs`). Whatever a broker measures above this is its own; whatever this measures is
//! the machine's (scheduler wake-ups, loopback, the client), which no broker can go under. On a
//! noisy host its p99 alone can exceed a latency target.
//!
//! The relay is one thread of blocking reads and writes, woken by the kernel per arrival: the
//! least a server can add. Chosen with `--url relay:`; only `latency` runs against it.

use std::io::{Read, Write};
use std::net::TcpListener;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::latency::LatencyArgs;
use super::paced::{Recorder, Schedule, next_due, payload};
use super::report::{Report, progress_bar};

/// Size of the relay's read buffer: bursts of due events arrive together and go on together.
const RELAY_BUFFER_BYTES: usize = 64 << 10;

/// The relay's answer to the publisher, one byte per event passed on.
const ACK: u8 = b'+';

pub async fn latency(args: &LatencyArgs, progress: bool) -> anyhow::Result<Report> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the relay's port")?;
    let address = listener.local_addr()?;
    let relay = std::thread::spawn(move || relay(&listener));
    // The subscriber connects first: the relay takes its connections in that order.
    let subscriber = tokio::net::TcpStream::connect(address)
        .await
        .context("connecting the subscriber to the relay")?;
    let publisher = tokio::net::TcpStream::connect(address)
        .await
        .context("connecting the publisher to the relay")?;
    subscriber.set_nodelay(true)?;
    publisher.set_nodelay(true)?;
    let (mut acks_source, mut publisher) = publisher.into_split();

    let schedule = Schedule::new(args);
    let (mut due, pacer) = schedule.start();
    let data_bytes = args.data_bytes;
    // One line per event; a burst of due events goes out in one write.
    let writer = tokio::spawn(async move {
        let mut burst_bytes = Vec::new();
        while let Some(burst) = next_due(&mut due).await {
            burst_bytes.clear();
            for i in burst {
                burst_bytes.extend_from_slice(&payload(i, data_bytes));
                burst_bytes.push(b'\n');
            }
            publisher.write_all(&burst_bytes).await?;
        }
        publisher.shutdown().await?;
        anyhow::Ok(())
    });

    let total = schedule.total;
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        let mut buffer = vec![0u8; RELAY_BUFFER_BYTES];
        while acked < total {
            let read = acks_source.read(&mut buffer).await?;
            anyhow::ensure!(read > 0, "the relay closed after {acked} of {total} acks");
            acked += read as u64;
        }
        anyhow::Ok(())
    });
    let bar = progress_bar(progress, total);
    bar.set_message("latency");
    let mut recorder = Recorder::new(schedule)?;
    let mut lines = BufReader::new(subscriber);
    let mut line = Vec::new();
    while !recorder.done() {
        line.clear();
        let read = tokio::time::timeout_at(
            schedule.deadline().into(),
            lines.read_until(b'\n', &mut line),
        );
        let Ok(read) = read.await else {
            recorder.check_deadline()?;
            continue;
        };
        anyhow::ensure!(
            read.context("reading from the relay")? > 0,
            "the relay closed after {} of {} events",
            recorder.received,
            total
        );
        recorder.record(&line)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    writer.await??;
    acks.await??;
    let _ = pacer.join();
    relay
        .join()
        .map_err(|_| anyhow::anyhow!("the relay thread panicked"))??;
    Ok(recorder.report(
        args,
        "loopback relay (no broker): one thread copying the publisher's lines to the \
         subscriber and acking each",
    ))
}

/// Accepts the subscriber, then the publisher, and copies what the publisher sends to the
/// subscriber, acking each line passed on, until the publisher closes.
fn relay(listener: &TcpListener) -> anyhow::Result<()> {
    let (mut subscriber, _) = listener.accept().context("accepting the subscriber")?;
    let (mut publisher, _) = listener.accept().context("accepting the publisher")?;
    subscriber.set_nodelay(true)?;
    publisher.set_nodelay(true)?;
    let mut buffer = vec![0u8; RELAY_BUFFER_BYTES];
    let mut acks = Vec::new();
    loop {
        let read = publisher.read(&mut buffer).context("relay: reading")?;
        if read == 0 {
            return Ok(());
        }
        subscriber
            .write_all(&buffer[..read])
            .context("relay: writing")?;
        let events = buffer[..read].iter().filter(|&&b| b == b'\n').count();
        acks.clear();
        acks.resize(events, ACK);
        publisher.write_all(&acks).context("relay: acking")?;
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;

    use super::*;

    #[test]
    fn the_relay_passes_the_publishers_lines_on_in_order_and_acks_each() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let relay = std::thread::spawn(move || relay(&listener));
        let mut subscriber = TcpStream::connect(address).unwrap();
        let mut publisher = TcpStream::connect(address).unwrap();
        let events = 50_000;
        let sent: Vec<u8> = (0..events)
            .flat_map(|i| format!("{{\"i\":{i}}}\n").into_bytes())
            .collect();
        let receiving = std::thread::spawn(move || {
            let mut received = Vec::new();
            subscriber.read_to_end(&mut received).map(|_| received)
        });
        publisher.write_all(&sent).unwrap();
        publisher.shutdown(std::net::Shutdown::Write).unwrap();
        let mut acks = Vec::new();
        publisher.read_to_end(&mut acks).unwrap();
        assert_eq!(receiving.join().unwrap().unwrap(), sent);
        assert_eq!(acks, vec![ACK; events]);
        relay.join().unwrap().unwrap();
    }
}
