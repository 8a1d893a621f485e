//! Every text path, property-tested over arbitrary Unicode (a short run;
//! `cargo bench --bench fuzz` runs the same targets for a million cases).

mod props;

/// Cases per target here: enough to catch regressions, quick in CI.
const CASES: u32 = 1_000;

#[test]
fn every_text_path_survives_arbitrary_input() {
    for t in props::TARGETS {
        (t.run)(if t.heavy { CASES / 2 } else { CASES });
    }
}
