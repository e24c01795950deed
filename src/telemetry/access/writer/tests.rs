use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::*;

/// A sink that keeps what it is given, and can be held shut to play a stalled stdout.
#[derive(Clone, Default)]
struct Sink {
    written: Arc<Mutex<Vec<u8>>>,
    writes: Arc<Mutex<usize>>,
    shut: Arc<(Mutex<bool>, Condvar)>,
}

impl Sink {
    fn shut(&self, shut: bool) {
        *self.shut.0.lock().unwrap() = shut;
        self.shut.1.notify_all();
    }

    fn lines(&self) -> Vec<String> {
        String::from_utf8(self.written.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn writes(&self) -> usize {
        *self.writes.lock().unwrap()
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut shut = self.shut.0.lock().unwrap();
        while *shut {
            shut = self.shut.1.wait(shut).unwrap();
        }
        self.written.lock().unwrap().extend_from_slice(buf);
        *self.writes.lock().unwrap() += 1;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn line(slot: &Slot, n: usize) {
    slot.push(|local| {
        local.bytes.extend_from_slice(format!("record {n}\n").as_bytes());
    });
}

fn settings(batch_bytes: usize, max_queued: usize, flush_every: Duration) -> Settings {
    Settings {
        batch_bytes,
        max_queued,
        flush_every,
    }
}

#[test]
fn stopping_writes_what_the_slots_hold() {
    let sink = Sink::default();
    let writer = Writer::start(sink.clone(), settings(1 << 20, 4, Duration::from_secs(3600))).unwrap();
    let slot = writer.slot();
    for n in 0..10 {
        line(&slot, n);
    }
    assert!(
        sink.lines().is_empty(),
        "nothing is written before a batch fills or the flush"
    );
    writer.stop();
    let expected: Vec<String> = (0..10).map(|n| format!("record {n}")).collect();
    assert_eq!(sink.lines(), expected);
    assert_eq!(sink.writes(), 1, "one write for the batch");
    assert_eq!(writer.dropped(), 0);
}

#[test]
fn full_batches_are_written_whole_one_write_each() {
    let sink = Sink::default();
    let writer = Writer::start(sink.clone(), settings(100, 64, Duration::from_secs(3600))).unwrap();
    let slot = writer.slot();
    for n in 0..100 {
        line(&slot, n);
    }
    writer.stop();
    assert_eq!(sink.lines().len(), 100);
    assert!(sink.writes() < 20, "{} writes for 100 records", sink.writes());
    assert!(sink.written.lock().unwrap().ends_with(b"\n"));
}

#[test]
fn a_quiet_slot_is_flushed_without_stopping() {
    let sink = Sink::default();
    let writer = Writer::start(sink.clone(), settings(1 << 20, 4, Duration::from_millis(10))).unwrap();
    line(&writer.slot(), 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sink.lines().is_empty() {
        assert!(Instant::now() < deadline, "the record was not flushed");
        std::thread::yield_now();
    }
    assert_eq!(sink.lines(), ["record 1"]);
}

#[test]
fn records_are_dropped_and_counted_when_the_sink_stalls() {
    let sink = Sink::default();
    sink.shut(true);
    // Every record is a batch of its own; two batches may wait.
    let writer = Writer::start(sink.clone(), settings(1, 2, Duration::from_secs(3600))).unwrap();
    let slot = writer.slot();
    for n in 0..100 {
        line(&slot, n);
    }
    // The writer holds at most the two it took before the sink stalled, two more wait.
    assert!(writer.dropped() >= 96, "dropped {}", writer.dropped());
    sink.shut(false);
    writer.stop();
    assert_eq!(sink.lines().len() as u64 + writer.dropped(), 100);
}

#[test]
fn threads_log_into_slots_of_their_own() {
    let sink = Sink::default();
    let writer = Arc::new(Writer::start(sink.clone(), settings(256, 64, Duration::from_secs(3600))).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let writer = writer.clone();
            std::thread::spawn(move || {
                let slot = writer.slot();
                for n in 0..50 {
                    line(&slot, t * 1000 + n);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    writer.stop();
    let mut lines = sink.lines();
    lines.sort();
    let mut expected: Vec<String> = (0..4)
        .flat_map(|t| (0..50).map(move |n| format!("record {}", t * 1000 + n)))
        .collect();
    expected.sort();
    assert_eq!(lines, expected, "every record once, whole");
}
