//! Plain values that cross the ABI: tensor handles, dtypes, initializers, sites,
//! parameter slots, metrics.
//!
//! Enumerations are `#[repr(transparent)]` newtypes over `u32` with associated
//! constants, not Rust enums: a later SDK 1.x can add a constant without changing any
//! layout, and a host that does not know a value answers with a clear error.

use abi_stable::{
    std_types::{ROption, RString, RVec},
    StableAbi,
};
use std::fmt;

/// An opaque reference to a tensor owned by the host.
///
/// The low 32 bits are a slot index, the high 32 bits the slot's generation: a handle
/// that outlived its tensor (temporaries are released at the end of every step) or that
/// was never issued is rejected with an error, never dereferenced.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TensorHandle(pub u64);

impl TensorHandle {
    /// "No tensor" (for example the output argument of a pre-hook).
    pub const NONE: TensorHandle = TensorHandle(u64::MAX);

    /// Whether this is [`TensorHandle::NONE`].
    pub const fn is_none(self) -> bool {
        self.0 == u64::MAX
    }
}

macro_rules! code_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $n:expr => $s:literal,)* }) => {
        $(#[$m])*
        #[repr(transparent)]
        #[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(pub u32);
        impl $name {
            $( $(#[$vm])* pub const $v: $name = $name($n); )*
            /// The lowercase name of this value, or `None` for a code this SDK does not know.
            pub fn name(self) -> Option<&'static str> {
                match self.0 { $( $n => Some($s), )* _ => None }
            }
            /// Parses a lowercase name.
            pub fn from_name(s: &str) -> Option<Self> {
                match s { $( $s => Some(Self::$v), )* _ => None }
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() { Some(n) => f.write_str(n), None => write!(f, "{}({})", stringify!($name), self.0) }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { fmt::Debug::fmt(self, f) }
        }
    };
}

code_enum! {
    /// Element type of a tensor.
    DType {
        /// 32-bit float (the default for parameters).
        F32 = 0 => "f32",
        /// 64-bit float.
        F64 = 1 => "f64",
        /// 16-bit float.
        F16 = 2 => "f16",
        /// bfloat16.
        BF16 = 3 => "bf16",
        /// 32-bit unsigned integer (token ids, indices).
        U32 = 4 => "u32",
        /// 64-bit signed integer (token ids as Hugging Face stores them; labels with -100).
        I64 = 5 => "i64",
        /// 8-bit unsigned integer (masks).
        U8 = 6 => "u8",
    }
}

code_enum! {
    /// Element-wise functions of one tensor, for [`HostOps::unary`](crate::abi::HostOps::unary).
    UnaryOp {
        /// `-x`
        NEG = 0 => "neg",
        /// `e^x`
        EXP = 1 => "exp",
        /// natural log
        LOG = 2 => "log",
        /// square root
        SQRT = 3 => "sqrt",
        /// `x²`
        SQR = 4 => "sqr",
        /// `|x|`
        ABS = 5 => "abs",
        /// `1/x`
        RECIP = 6 => "recip",
        /// hyperbolic tangent
        TANH = 7 => "tanh",
        /// logistic sigmoid
        SIGMOID = 8 => "sigmoid",
        /// `max(x, 0)`
        RELU = 9 => "relu",
        /// GELU, exact (erf) form, as PyTorch's default `gelu`
        GELU = 10 => "gelu",
        /// GELU, tanh approximation (`gelu_pytorch_tanh`)
        GELU_TANH = 11 => "gelu_tanh",
        /// SiLU / swish: `x·σ(x)`
        SILU = 12 => "silu",
        /// sign: -1, 0 or 1 (gradient zero)
        SIGN = 13 => "sign",
        /// sine
        SIN = 14 => "sin",
        /// cosine
        COS = 15 => "cos",
        /// `1/√x`
        RSQRT = 16 => "rsqrt",
    }
}

code_enum! {
    /// Element-wise comparisons, for [`HostOps::compare`](crate::abi::HostOps::compare);
    /// the result is a `u8` mask (1 where true).
    CmpOp {
        /// `a == b`
        EQ = 0 => "eq",
        /// `a != b`
        NE = 1 => "ne",
        /// `a < b`
        LT = 2 => "lt",
        /// `a <= b`
        LE = 3 => "le",
        /// `a > b`
        GT = 4 => "gt",
        /// `a >= b`
        GE = 5 => "ge",
    }
}

code_enum! {
    /// Severity of a message sent to the host's log.
    LogLevel {
        /// Verbose diagnostics.
        DEBUG = 0 => "debug",
        /// Normal progress.
        INFO = 1 => "info",
        /// Something the user should look at.
        WARN = 2 => "warn",
        /// Something failed.
        ERROR = 3 => "error",
    }
}

code_enum! {
    /// How [`HostOps::new_param`](crate::abi::HostOps::new_param) fills a new tensor.
    InitKind {
        /// All zeros.
        ZEROS = 0 => "zeros",
        /// All ones.
        ONES = 1 => "ones",
        /// Every element `a`.
        CONSTANT = 2 => "constant",
        /// Uniform on `[a, b)`.
        UNIFORM = 3 => "uniform",
        /// Normal with mean `a`, standard deviation `b`.
        NORMAL = 4 => "normal",
    }
}

/// An initializer: a kind and its two parameters (see [`InitKind`]).
///
/// Random initializers draw from the host's seeded generator, so a run's parameters are
/// reproducible from its seed.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq)]
pub struct Init {
    /// Which distribution.
    pub kind: InitKind,
    /// First parameter (constant value, lower bound, or mean).
    pub a: f64,
    /// Second parameter (upper bound or standard deviation).
    pub b: f64,
}

impl Init {
    /// All zeros.
    pub const ZEROS: Init = Init { kind: InitKind::ZEROS, a: 0.0, b: 0.0 };
    /// All ones.
    pub const ONES: Init = Init { kind: InitKind::ONES, a: 0.0, b: 0.0 };

    /// Every element `v`.
    pub const fn constant(v: f64) -> Init {
        Init { kind: InitKind::CONSTANT, a: v, b: 0.0 }
    }
    /// Uniform on `[lo, hi)`.
    pub const fn uniform(lo: f64, hi: f64) -> Init {
        Init { kind: InitKind::UNIFORM, a: lo, b: hi }
    }
    /// Normal with this mean and standard deviation.
    pub const fn normal(mean: f64, std: f64) -> Init {
        Init { kind: InitKind::NORMAL, a: mean, b: std }
    }
    /// PyTorch's `kaiming_uniform_(w, a=√5)` for a weight with `fan_in` inputs, the
    /// default init of `nn.Linear` and of LoRA's A matrix: uniform on `±1/√fan_in`.
    pub fn kaiming_uniform(fan_in: usize) -> Init {
        let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
        Init::uniform(-bound, bound)
    }
}

code_enum! {
    /// What kind of place in the model a [`SiteInfo`] is.
    SiteKind {
        /// A linear layer. `dims = [in_features, out_features]`. Pre-hook: input
        /// `[.., in]`; post-hook: input and output `[.., out]`.
        LINEAR = 0 => "linear",
        /// A token embedding table. `dims = [num_embeddings, dim]`. Post-hook: input is
        /// the ids, output `[batch, seq, dim]`.
        EMBEDDING = 1 => "embedding",
        /// A normalization layer. `dims = [dim]`. Post-hook on `[batch, seq, dim]`.
        NORM = 2 => "norm",
        /// Attention keys after projection and position encoding.
        /// `dims = [num_kv_heads, head_dim]`. Post-hook on `[batch, kv_heads, seq, head_dim]`;
        /// the output may be longer along `seq` (prefix tuning), and the host extends the
        /// attention mask to match.
        ATTN_KEY = 3 => "attn_key",
        /// Attention values, as [`SiteKind::ATTN_KEY`].
        ATTN_VALUE = 4 => "attn_value",
        /// The output of a transformer block. `dims = [hidden]`. Post-hook on `[batch, seq, hidden]`.
        BLOCK_OUTPUT = 5 => "block_output",
        /// The input embeddings of the whole model. `dims = [hidden]`. Post-hook on
        /// `[batch, seq, hidden]`; the output may be longer along `seq` (prompt tuning),
        /// and the host extends the mask and positions to match.
        INPUT_EMBEDS = 6 => "input_embeds",
        /// The attention sublayer's output: after the output projection (and the model's
        /// dropout), before the residual add. `dims = [hidden]`. Post-hook on
        /// `[batch, seq, hidden]`. (Since 1.1.)
        ATTN_OUTPUT = 7 => "attn_output",
        /// The MLP sublayer's output: after its down projection (and the model's
        /// dropout), before the residual add. `dims = [hidden]`. Post-hook on
        /// `[batch, seq, hidden]`. (Since 1.1.)
        MLP_OUTPUT = 8 => "mlp_output",
    }
}

code_enum! {
    /// What a site does in its architecture, the same across model families: Llama's
    /// `self_attn.q_proj` and BERT's `attention.self.query` are both [`SiteRole::ATTN_Q`].
    /// Target patterns name roles as `role:<name>` (`role:attn_q`), so one adapter config
    /// fits every architecture. Ask the host with
    /// [`Host::site_role`](crate::Host::site_role). (Since 1.1.)
    SiteRole {
        /// A site the host gives no role (a model family newer than this list).
        OTHER = 0 => "other",
        /// The token embedding table (`model.embed_tokens`, `embeddings.word_embeddings`).
        EMBED_TOKENS = 1 => "embed_tokens",
        /// The input embeddings of the whole model (prompt tuning attaches here).
        INPUT_EMBEDS = 2 => "input_embeds",
        /// The norm on the embeddings (BERT's `embeddings.LayerNorm`).
        EMBED_NORM = 3 => "embed_norm",
        /// The attention sublayer's norm (Llama's `input_layernorm`, BERT's
        /// `attention.output.LayerNorm`).
        ATTN_NORM = 4 => "attn_norm",
        /// The query projection.
        ATTN_Q = 5 => "attn_q",
        /// The key projection.
        ATTN_K = 6 => "attn_k",
        /// The value projection.
        ATTN_V = 7 => "attn_v",
        /// Attention keys after projection and position encoding (prefix tuning).
        KEY_STATES = 8 => "key_states",
        /// Attention values (prefix tuning).
        VALUE_STATES = 9 => "value_states",
        /// The attention output projection (Llama's `o_proj`, BERT's `attention.output.dense`).
        ATTN_O = 10 => "attn_o",
        /// The attention sublayer's output before the residual add (bottleneck adapters).
        ATTN_OUTPUT = 11 => "attn_output",
        /// The MLP sublayer's norm (Llama's `post_attention_layernorm`, BERT's `output.LayerNorm`).
        MLP_NORM = 12 => "mlp_norm",
        /// The gate projection of a gated MLP (Llama's `gate_proj`).
        MLP_GATE = 13 => "mlp_gate",
        /// The MLP's up projection (Llama's `up_proj`, BERT's `intermediate.dense`).
        MLP_UP = 14 => "mlp_up",
        /// The MLP's down projection (Llama's `down_proj`, BERT's `output.dense`).
        MLP_DOWN = 15 => "mlp_down",
        /// The MLP sublayer's output before the residual add (bottleneck adapters).
        MLP_OUTPUT = 16 => "mlp_output",
        /// A transformer block's output.
        BLOCK_OUTPUT = 17 => "block_output",
        /// The norm after the last block (Llama's `model.norm`).
        FINAL_NORM = 18 => "final_norm",
        /// The language-model head.
        LM_HEAD = 19 => "lm_head",
        /// The pooler's dense layer (BERT's `pooler.dense`).
        POOLER = 20 => "pooler",
    }
}

code_enum! {
    /// Whether an adaptation method can be folded into the base weights
    /// ([`AdaptationMethod::merge_support`](crate::AdaptationMethod::merge_support)).
    /// The host checks it before a pipeline trains, so a `merge` handoff of a method
    /// that cannot merge fails at `--check`, not after the previous stage. (Since 1.1.)
    MergeSupport {
        /// The method does not say (plugins built before 1.1): the host tries a merge on
        /// a scratch copy of the model to find out.
        UNKNOWN = 0 => "unknown",
        /// `merge` folds the method into the weights (and `merge_bias` into the bias).
        YES = 1 => "yes",
        /// The method changes the computation in a way no weight can hold (prompt and
        /// prefix tuning, bottleneck adapters).
        NO = 2 => "no",
    }
}

/// The shape of the model, as adaptation methods see it through
/// [`Host::model_info`](crate::Host::model_info). (Since 1.1.)
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Architecture family, e.g. `llama` or `bert`.
    pub arch: RString,
    /// Hidden size (the width of every block's input and output).
    pub hidden: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Number of transformer blocks.
    pub num_layers: usize,
    /// Attention (query) heads.
    pub num_heads: usize,
    /// Key/value heads (fewer than `num_heads` under grouped-query attention).
    pub num_kv_heads: usize,
    /// Size of one attention head.
    pub head_dim: usize,
    /// Inner size of the MLP.
    pub intermediate: usize,
    /// Whether the model is a decoder (causal attention) or an encoder.
    pub causal: bool,
    /// Longest sequence the position encoding allows (0: no fixed limit, as with RoPE).
    pub max_positions: usize,
}

/// A named place in the model where adaptation methods attach.
///
/// Names are Hugging Face parameter paths without the `.weight` suffix
/// (`model.layers.3.self_attn.q_proj`), so PEFT's `target_modules` patterns apply as is.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct SiteInfo {
    /// Full name, e.g. `model.layers.3.self_attn.q_proj`.
    pub name: RString,
    /// What the site is.
    pub kind: SiteKind,
    /// Kind-specific sizes (see [`SiteKind`]).
    pub dims: RVec<usize>,
    /// The transformer block the site is in, if any.
    pub layer: ROption<u32>,
    /// Whether the site's base layer has a bias.
    pub has_bias: bool,
}

impl SiteInfo {
    /// The last component of the name (`q_proj` for `model.layers.0.self_attn.q_proj`).
    pub fn short_name(&self) -> &str {
        self.name.as_str().rsplit('.').next().unwrap_or("")
    }
}

/// When an adaptation method runs at a site: before the base computation, on its
/// input, or after it, on its output. A method can ask for both.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hooks(pub u32);

impl Hooks {
    /// Transform the site's input (linear sites only): `x → x'`, then the base runs on `x'`.
    pub const PRE: Hooks = Hooks(1);
    /// Transform the site's output: `(x, y) → y'`.
    pub const POST: Hooks = Hooks(2);
    /// Both.
    pub const BOTH: Hooks = Hooks(3);

    /// Whether all of `other`'s bits are set.
    pub const fn contains(self, other: Hooks) -> bool {
        self.0 & other.0 == other.0
    }
}

/// An adaptation method's answer to "which sites?": a site (index into the list it was
/// offered) and the hooks it wants there.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attachment {
    /// Index into the site list passed to `select_sites`.
    pub site: u32,
    /// Pre, post or both.
    pub hooks: Hooks,
}

/// What an adaptation method adds at a linear site, declared as a low-rank update:
/// `y + scale·(x·Aᵀ)·Bᵀ` for the site's input `x` `[.., in]` and output `y`
/// `[.., out]`, with `a` `[r, in]` and `b` `[out, r]` parameters of the method (LoRA's
/// `lora_A` and `lora_B`). See [`AdaptationMethod::low_rank`](crate::AdaptationMethod::low_rank).
/// (Since 1.4.)
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq)]
pub struct LowRank {
    /// `A`, `[r, in]`.
    pub a: TensorHandle,
    /// `B`, `[out, r]`.
    pub b: TensorHandle,
    /// The factor on the product.
    pub scale: f64,
}

/// A tensor with a name (model outputs, batch fields, optimizer state).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// The name.
    pub name: RString,
    /// The tensor.
    pub tensor: TensorHandle,
}

/// One trainable parameter as an optimizer sees it in a step.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ParamSlot {
    /// The parameter's full name (stable across runs: use it to name optimizer state).
    pub name: RString,
    /// The parameter. Update it with `assign`.
    pub param: TensorHandle,
    /// Its gradient this step, or [`TensorHandle::NONE`] when it got none (skip it).
    pub grad: TensorHandle,
    /// The learning rate for this parameter this step: the schedule's value times any
    /// per-layer factor. Use it instead of the `lr` in your config.
    pub lr: f64,
    /// Multiplier for weight decay: 1 normally, 0 for parameters excluded from decay
    /// (biases, norms, embeddings when so configured).
    pub decay_mul: f64,
}

/// The hyperparameters of one AdamW update, for
/// [`HostOps::adamw_step`](crate::abi::HostOps::adamw_step) /
/// [`Host::adamw_step`](crate::Host::adamw_step). (Since 1.2.)
///
/// With `t = step`, the update of a parameter `p` with gradient `g` and moments `m`, `v`
/// is `torch.optim.AdamW`'s:
/// ```text
/// m  = β1·m + (1-β1)·g
/// v  = β2·v + (1-β2)·g²
/// p  = p·(1 - lr·weight_decay) - lr · (m·c1) / (√(v·c2) + eps)
/// ```
/// where `(c1, c2)` are the bias corrections of [`AdamWStep::bias_corrections`].
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    /// The learning rate of this parameter this step ([`ParamSlot::lr`]).
    pub lr: f64,
    /// Decay rate of the first moment average `m`.
    pub beta1: f64,
    /// Decay rate of the second moment average `v`.
    pub beta2: f64,
    /// Added to `√v̂` in the denominator.
    pub eps: f64,
    /// Decoupled weight decay of this parameter: the config's rate times
    /// [`ParamSlot::decay_mul`]. The parameter is multiplied by `1 - lr·weight_decay`.
    pub weight_decay: f64,
    /// The step number `t`, counting from 1 (0 is refused).
    pub step: u64,
}

impl AdamWStep {
    /// The bias corrections `(1/(1-β1^t), 1/(1-β2^t))`, in f64 as `candle_nn::AdamW`
    /// computes them (`powi`; past `i32::MAX` steps both powers are 0 anyway).
    pub fn bias_corrections(&self) -> (f64, f64) {
        let t = i32::try_from(self.step).unwrap_or(i32::MAX);
        (1.0 / (1.0 - self.beta1.powi(t)), 1.0 / (1.0 - self.beta2.powi(t)))
    }
}

/// A metric contribution: the host sums `sum` and `count` over batches and reports
/// `sum / count`.
///
/// A metric given per example ([`Metric::per_example`]: one entry per row of the
/// batch, in row order, each with count 1, or 0 for a row it does not score) sums to
/// the same value, and the host also records each example's score, which
/// `stagecraft compare` pairs between two runs for its confidence intervals.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct Metric {
    /// Name, e.g. `exact_match` or `accuracy`.
    pub name: RString,
    /// Sum of the metric over the examples of this batch.
    pub sum: f64,
    /// Number of examples (or tokens) the sum is over.
    pub count: f64,
}

impl Metric {
    /// A metric contribution.
    pub fn new(name: &str, sum: f64, count: f64) -> Metric {
        Metric { name: name.into(), sum, count }
    }

    /// One contribution per row of the batch, in row order: `Some(score)` (count 1),
    /// or `None` for a row the metric does not score (count 0; for example a
    /// completion truncated away).
    ///
    /// ```
    /// use stagecraft_sdk::Metric;
    /// let m = Metric::per_example("exact_match", &[Some(1.0), None, Some(0.0)]);
    /// assert_eq!(m.iter().map(|m| (m.sum, m.count)).collect::<Vec<_>>(), [(1.0, 1.0), (0.0, 0.0), (0.0, 1.0)]);
    /// ```
    pub fn per_example(name: &str, scores: &[Option<f64>]) -> Vec<Metric> {
        scores
            .iter()
            .map(|s| match s {
                Some(v) => Metric::new(name, *v, 1.0),
                None => Metric::new(name, 0.0, 0.0),
            })
            .collect()
    }
}

/// What a stage's objective returns for one batch.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct LossOutput {
    /// Scalar loss to minimize (mean over the batch).
    pub loss: TensorHandle,
    /// Loss per example, `[batch]`, for loss quantiles; or [`TensorHandle::NONE`].
    pub per_example: TensorHandle,
    /// Metric contributions (exact match, accuracy, ...).
    pub metrics: RVec<Metric>,
}

/// What the host tells a stage after each optimizer step.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct StepInfo {
    /// Optimizer steps taken in this stage so far (1 after the first).
    pub step: u64,
    /// This step's training loss.
    pub loss: f64,
    /// This step's base learning rate.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// A stage hook's decision.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Control(pub u32);

impl Control {
    /// Keep going.
    pub const CONTINUE: Control = Control(0);
    /// End the stage now (its result is kept).
    pub const STOP: Control = Control(1);
    /// Restore the stage's best evaluated state and end the stage.
    pub const ROLLBACK: Control = Control(2);
}

/// What a stage learns about the model when it starts.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// Architecture family, e.g. `llama` or `bert`.
    pub arch: RString,
    /// Hidden size.
    pub hidden: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Number of transformer blocks.
    pub num_layers: usize,
    /// Whether the model is a decoder (causal) or an encoder.
    pub causal: bool,
}

code_enum! {
    /// The three kinds of plugin.
    PluginKind {
        /// An [`AdaptationMethod`](crate::AdaptationMethod) (LoRA, IA3, ...).
        METHOD = 0 => "method",
        /// An [`Optimizer`](crate::Optimizer) (AdamW, Lion, ...).
        OPTIMIZER = 1 => "optimizer",
        /// A [`Stage`](crate::Stage) objective (causal LM, classification, ...).
        STAGE = 2 => "stage",
    }
}

/// What a library says about one plugin it provides.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct PluginInfo {
    /// Registered name: lowercase snake_case, unique (`lora`, `adamw`).
    pub name: RString,
    /// Which kind.
    pub kind: PluginKind,
    /// The plugin's own version.
    pub version: RString,
    /// One line on what it does.
    pub description: RString,
    /// JSON Schema of its config.
    pub config_schema: RString,
}
