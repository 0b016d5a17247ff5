//! The `Persist` trait: every stateful part of a microVM saves itself to a
//! plain serde `State` and restores from one.
//!
//! A restore builds the microVM from the saved configuration through the
//! same phases as a cold boot, so every part already exists, wired to the
//! same buses, windows and interrupt lines, when its state arrives. The
//! context a part needs to restore is therefore the part itself, freshly
//! built: `restore` applies a `State` to it in place.

use serde::de::DeserializeOwned;
use serde::Serialize;

pub trait Persist {
    /// What is saved: plain data, no file descriptors or pointers.
    type State: Serialize + DeserializeOwned;
    /// Why a state cannot be applied.
    type Error: std::error::Error;

    /// Captures the part's state. Called with every vCPU paused.
    fn save(&self) -> Self::State;

    /// Applies `state` to this part, freshly built from the same
    /// configuration, before any vCPU runs.
    fn restore(&mut self, state: &Self::State) -> Result<(), Self::Error>;
}
