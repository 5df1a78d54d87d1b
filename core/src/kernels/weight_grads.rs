//! Weight gradients that bypass candle's gradient store: [`backward`].
//!
//! candle's backward adds every gradient an op returns into a fresh zero tensor of
//! the input's size (`GradStore::or_insert`, then `add`), even when it is the only
//! contribution. For a full fine-tuning step that is one zeroed copy and one addition
//! per weight matrix: over W2's weight shapes (97 MiB) that zeroing and addition took
//! ~85 ms measured on its own, about 5% of a W2 full step. The fused ops that take a weight ([`super::linear`],
//! [`super::gated_mlp`]) therefore take a trainable weight *detached* and deposit its
//! gradient here, on the thread running backward, and [`backward`] puts the deposits
//! into the store afterwards: the gradient tensor the op computed, unchanged.
//!
//! Only a variable (a leaf: a model weight, an adapter's parameter) goes this way, and
//! only where another input of the op is tracked, so that candle still calls the op's
//! backward; a weight computed from others (a merged weight) stays in the graph, so
//! its gradient flows on to what it was computed from.
//!
//! Call [`backward`] instead of `Tensor::backward` wherever a loss may reach these ops:
//! candle's own leaves their weights out of the store.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor};
use std::cell::RefCell;

thread_local! {
    /// Gradients deposited during the backward pass running on this thread, with the
    /// variable each belongs to.
    static DEPOSITS: RefCell<Vec<(Tensor, Tensor)>> = const { RefCell::new(Vec::new()) };
}

/// How a fused op takes a weight `w`: the tensor to compute with, and the variable to
/// credit its gradient to, when it takes it detached.
pub(crate) struct WeightInput {
    pub tensor: Tensor,
    pub credit: Option<Tensor>,
}

impl WeightInput {
    /// `w` detached with itself as the credit when it is a variable and `others_tracked`
    /// (another input of the op needs or passes on a gradient); `w` as it is otherwise.
    pub fn new(w: &Tensor, others_tracked: bool) -> WeightInput {
        match w.is_variable() && others_tracked {
            true => WeightInput { tensor: w.detach(), credit: Some(w.clone()) },
            false => WeightInput { tensor: w.clone(), credit: None },
        }
    }

    /// Whether the op must compute this weight's gradient, given the tensor it received.
    pub fn wanted(credit: &Option<Tensor>, received: &Tensor) -> bool {
        credit.is_some() || received.track_op()
    }

    /// The gradient to return to candle for the weight: `None` when it was deposited
    /// for `credit` instead.
    pub fn settle(credit: &Option<Tensor>, grad: Option<Tensor>) -> Option<Tensor> {
        match (credit, grad) {
            (Some(var), Some(g)) => {
                DEPOSITS.with(|d| d.borrow_mut().push((var.clone(), g)));
                None
            }
            (_, g) => g,
        }
    }
}

/// `loss.backward()`, with the gradients the fused ops deposited for their detached
/// weights added to the store (summed where a weight also got a gradient through the
/// graph or from several ops).
pub fn backward(loss: &Tensor) -> Result<GradStore> {
    DEPOSITS.with(|d| d.borrow_mut().clear());
    let result = loss.backward();
    let deposits = DEPOSITS.with(|d| std::mem::take(&mut *d.borrow_mut()));
    let mut grads = result?;
    for (var, g) in deposits {
        let total = match grads.get(&var) {
            Some(earlier) => (earlier + &g)?,
            None => g,
        };
        grads.insert(&var, total);
    }
    Ok(grads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::linear::linear;
    use crate::kernels::rel_err;
    use candle_core::{Device, Var};

    /// `dW` of `Σ 4·x·Wᵀ` is `4·Σ_rows x` in every row.
    fn expected(x: &Tensor, out: usize) -> Result<Tensor> {
        (x.sum_keepdim(0)? * 4.0)?.broadcast_as((out, x.dim(1)?))?.contiguous()
    }

    #[test]
    fn a_weight_used_by_several_ops_gets_the_sum_of_its_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (3, 8), &dev)?;
        let w = Var::randn(0f32, 1.0, (5, 8), &dev)?;
        // Twice through the fused op (one deposit scaled by 2), once through candle's
        // matmul (in the store).
        let y = ((linear(&x, &w)? * 2.0)? + linear(&x, &w)?)?;
        let loss = (y + x.matmul(&w.t()?)?)?.sum_all()?;
        let g = backward(&loss)?;
        assert!(rel_err(g.get(&w).expect("weight gradient"), &expected(&x, 5)?)? <= 1e-6);
        // candle's own backward leaves the deposited gradients out (why `backward`).
        let plain = loss.backward()?;
        assert!(rel_err(plain.get(&w).expect("matmul's share"), &(expected(&x, 5)? / 4.0)?)? <= 1e-6);
        Ok(())
    }

    #[test]
    fn a_weight_whose_op_has_no_other_tracked_input_stays_in_the_graph() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (3, 8), &dev)?; // a constant input
        let w = Var::randn(0f32, 1.0, (5, 8), &dev)?;
        let g = (linear(&x, &w)? * 4.0)?.sum_all()?.backward()?;
        assert!(rel_err(g.get(&w).expect("weight gradient"), &expected(&x, 5)?)? <= 1e-6);
        Ok(())
    }
}
