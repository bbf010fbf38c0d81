//! Errors reported by the kernel constructors.

/// An error building a kernel data structure.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    /// The input slice does not hold `rows * cols` elements.
    #[error("matrix data has {got} elements, expected {rows} x {cols}")]
    ShapeMismatch {
        /// Requested rows.
        rows: usize,
        /// Requested columns.
        cols: usize,
        /// Elements actually supplied.
        got: usize,
    },
    /// A dimension is zero or `rows * cols` overflows.
    #[error("invalid matrix shape {rows} x {cols}")]
    InvalidShape {
        /// Requested rows.
        rows: usize,
        /// Requested columns.
        cols: usize,
    },
}
