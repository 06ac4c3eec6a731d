//! Side-by-side timing in alternating rounds (A B C A B C …), so that a
//! change in the machine's speed during the run touches every side alike;
//! the figures quoted in the README come from here.

use std::{
    future::Future,
    pin::Pin,
    time::{Duration, Instant},
};

/// One side: its name, and one cycle of the work to time.
pub type Side<'a> = (
    &'a str,
    Box<dyn FnMut() -> Pin<Box<dyn Future<Output = ()> + 'a>> + 'a>,
);

/// The median time per cycle of each side over `rounds` rounds of
/// `per_round` cycles, printed with each side's ratio to the first.
pub async fn compare(
    title: &str,
    rounds: usize,
    per_round: u32,
    sides: &mut [Side<'_>],
) -> Vec<Duration> {
    let mut times = vec![Vec::with_capacity(rounds); sides.len()];
    for _ in 0..rounds {
        for (side, (_, cycle)) in sides.iter_mut().enumerate() {
            let start = Instant::now();
            for _ in 0..per_round {
                cycle().await;
            }
            times[side].push(start.elapsed() / per_round);
        }
    }
    let medians: Vec<Duration> = times
        .into_iter()
        .map(|mut t| {
            t.sort();
            t[t.len() / 2]
        })
        .collect();
    println!("{title}, interleaved: median of {rounds} rounds of {per_round} cycles per side");
    for ((name, _), median) in sides.iter().zip(&medians) {
        println!(
            "  {name:<40} {median:>10.1?}   first side / this: {:.2}x",
            medians[0].as_secs_f64() / median.as_secs_f64()
        );
    }
    medians
}
