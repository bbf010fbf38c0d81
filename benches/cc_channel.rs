//! Criterion benchmarks of the sealed CC channel on the host (`veil_engine::cc`).
//!
//! * `cc_channel/seal/64MiB_tN`: one 64 MiB message sealed into its frame (AES-256-GCM, 64 KiB
//!   chunks) on N host threads.
//! * `cc_channel/open/64MiB_tN`: the same frame checked and opened into a destination on N
//!   threads (every tag first, then the keystream).
//!
//! Throughput is bytes of plaintext. A line at start-up says whether the CPU has the AES and
//! carry-less multiply instructions the `aes` and `polyval` crates pick at run time (without
//! them they fall back to a software AES many times slower).

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use veil_engine::cc::{ChannelConfig, ChannelSecret, Direction, Opener, Sealer, frame_len};

const LEN: usize = 64 << 20;

fn cpu_features() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        format!(
            "aes: {}, pclmulqdq: {}",
            std::arch::is_x86_feature_detected!("aes"),
            std::arch::is_x86_feature_detected!("pclmulqdq")
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        String::from("(not x86_64)")
    }
}

fn bench_channel(c: &mut Criterion) {
    println!("cc_channel: {}", cpu_features());
    let secret = ChannelSecret::from_bytes([0x11; 32]);
    let plaintext: Vec<u8> = (0..LEN).map(|i| (i * 31 + 7) as u8).collect();
    let mut g = c.benchmark_group("cc_channel");
    g.throughput(Throughput::Bytes(LEN as u64));
    g.sample_size(10);
    for threads in [1, 2] {
        let config = ChannelConfig {
            threads,
            ..ChannelConfig::default()
        };
        let fresh_sealer =
            || Sealer::new(&secret, 0, Direction::HostToDevice, config.clone()).expect("valid config");
        let mut frame = vec![0u8; frame_len(LEN, config.chunk_size)];

        let mut sealer = fresh_sealer();
        g.bench_function(format!("seal/64MiB_t{threads}"), |b| {
            b.iter(|| sealer.seal(black_box(&plaintext), &mut frame).expect("seal"))
        });

        // Every open needs the frame of the opener's next message: a fresh opener per
        // iteration opens the first frame of a fresh sealer.
        fresh_sealer().seal(&plaintext, &mut frame).expect("seal");
        let mut dst = vec![0u8; LEN];
        let mut opener = Opener::new(&secret, 0, Direction::HostToDevice, config.clone()).expect("config");
        opener.open(&frame, &mut dst).expect("open");
        assert!(dst == plaintext, "the frame opens to the plaintext");
        g.bench_function(format!("open/64MiB_t{threads}"), |b| {
            b.iter_batched(
                || Opener::new(&secret, 0, Direction::HostToDevice, config.clone()).expect("valid config"),
                |mut opener| opener.open(black_box(&frame), &mut dst).expect("open"),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(cc_channel, bench_channel);
criterion_main!(cc_channel);
