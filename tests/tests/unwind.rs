//! End to end on the ordinary workloads (tests/workloads: calls through libc, a leaf that touches the pages, a
//! shared library, C++ and Rust, all built -O2 -g without frame pointers): the top site of the leak's kind must name
//! the leaking function and carry the user call chain from it down to main intact, as only an unwinder that does
//! not rely on frame pointers gets it. The first two are VM scenarios too (tests/src/scenarios.rs).
//!
//! `cargo xtask test --test unwind -- --nocapture` prints each report's top sites with their frames.
use anyhow::Result;
use leaktrace_e2e::{
    scenario_test,
    scenarios::{RETAIN_BLOCKS, SESSION_CACHE, SESSION_HEAP, SESSION_STORE, UPSTREAM_PIPES},
};

#[test]
fn heap_leak_touched_in_a_leaf_names_the_whole_call_chain() -> Result<()> {
    scenario_test(&SESSION_HEAP, &[], |_| Ok(()))
}

#[test]
fn pipes_leaked_through_libc_name_the_caller_chain() -> Result<()> {
    scenario_test(&UPSTREAM_PIPES, &[], |_| Ok(()))
}

#[test]
fn heap_leak_in_a_shared_library_names_its_callers() -> Result<()> {
    scenario_test(&SESSION_CACHE, &[], |_| Ok(()))
}

#[test]
fn cxx_method_leaking_through_operator_new_is_named() -> Result<()> {
    scenario_test(&SESSION_STORE, &[], |_| Ok(()))
}

#[test]
fn rust_vec_leak_is_named_with_demangled_frames() -> Result<()> {
    scenario_test(&RETAIN_BLOCKS, &[], |_| Ok(()))
}
