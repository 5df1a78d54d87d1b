//! The distributions the drift tests read their p-values from: the Kolmogorov
//! distribution's survival function and the chi-square survival function (the
//! regularized upper incomplete gamma function).
//!
//! Both are the classic series / continued-fraction evaluations (Numerical Recipes,
//! 3rd ed., §6.2 and §6.14), accurate to about 1e-12 where the tests use them; the unit
//! tests compare them with scipy.
//!
//! ```
//! use stagecraft_core::drift::special::{chi2_sf, kolmogorov_sf};
//! assert!((chi2_sf(3.8414588206941285, 1) - 0.05).abs() < 1e-9);
//! assert!((kolmogorov_sf(1.3580986393225507) - 0.05).abs() < 1e-9);
//! ```

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 coefficients).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 - x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + G + 0.5;
    let sum = C[0] + C.iter().enumerate().skip(1).map(|(i, c)| c / (x + i as f64)).sum::<f64>();
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// The regularized upper incomplete gamma function Q(a, x) = Γ(a, x) / Γ(a), for
/// a > 0 and x >= 0.
pub fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    if x < a + 1.0 {
        1.0 - gamma_p_series(a, x)
    } else {
        gamma_q_fraction(a, x)
    }
}

/// P(a, x) by its power series (converges fast for x < a + 1).
fn gamma_p_series(a: f64, x: f64) -> f64 {
    let mut term = 1.0 / a;
    let mut sum = term;
    let mut n = a;
    for _ in 0..1000 {
        n += 1.0;
        term *= x / n;
        sum += term;
        if term.abs() < sum.abs() * 1e-16 {
            break;
        }
    }
    sum * (-x + a * x.ln() - ln_gamma(a)).exp()
}

/// Q(a, x) by its continued fraction (modified Lentz; converges fast for x >= a + 1).
fn gamma_q_fraction(a: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let mut b = x + 1.0 - a;
    let mut c = 1.0 / TINY;
    let mut d = 1.0 / b;
    let mut h = d;
    for i in 1..1000 {
        let an = -(i as f64) * (i as f64 - a);
        b += 2.0;
        d = an * d + b;
        if d.abs() < TINY {
            d = TINY;
        }
        c = b + an / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    (-x + a * x.ln() - ln_gamma(a)).exp() * h
}

/// P(χ²_dof >= x): the chi-square survival function.
pub fn chi2_sf(x: f64, dof: usize) -> f64 {
    gamma_q(dof as f64 / 2.0, x / 2.0)
}

/// P(K >= λ) for the Kolmogorov distribution K (the limit of √n · D_n):
/// 2 Σ_{k>=1} (-1)^(k-1) exp(-2k²λ²), or for small λ the equivalent
/// 1 - √(2π)/λ Σ_{k>=1} exp(-(2k-1)²π²/(8λ²)), which converges faster there.
pub fn kolmogorov_sf(lambda: f64) -> f64 {
    if lambda <= 0.0 {
        return 1.0;
    }
    let pi = std::f64::consts::PI;
    if lambda < 1.18 {
        let y = -pi * pi / (8.0 * lambda * lambda);
        let sum: f64 = (1..=20).map(|k| ((2 * k - 1) as f64).powi(2) * y).map(f64::exp).sum();
        (1.0 - (2.0 * pi).sqrt() / lambda * sum).clamp(0.0, 1.0)
    } else {
        let sum: f64 = (1..=100)
            .map(|k| if k % 2 == 1 { 1.0 } else { -1.0 } * (-2.0 * (k * k) as f64 * lambda * lambda).exp())
            .sum();
        (2.0 * sum).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol * b.abs().max(1e-300), "{a} vs {b}");
    }

    #[test]
    fn ln_gamma_matches_scipy() {
        // python3 -c "from scipy.special import gammaln; print([float(gammaln(x)) for x in (0.5, 1, 3.5, 10, 171.3)])"
        close(ln_gamma(0.5), 0.5723649429247, 1e-13);
        assert!(ln_gamma(1.0).abs() < 1e-14);
        close(ln_gamma(3.5), 1.2009736023470743, 1e-13);
        close(ln_gamma(10.0), 12.801827480081469, 1e-13);
        close(ln_gamma(171.3), 708.1149470389971, 1e-13);
    }

    #[test]
    fn chi2_sf_matches_scipy() {
        // python3 -c "from scipy.stats import chi2; print([float(chi2.sf(x, k)) for x, k in ((0.5, 1), (3.0, 2), (10.0, 3), (40.0, 10), (0.1, 7), (200.0, 50))])"
        close(chi2_sf(0.5, 1), 0.47950012218695337, 1e-11);
        close(chi2_sf(3.0, 2), 0.22313016014842982, 1e-11);
        close(chi2_sf(10.0, 3), 0.01856613546304325, 1e-11);
        close(chi2_sf(40.0, 10), 1.694474393006737e-05, 1e-10);
        close(chi2_sf(0.1, 7), 0.9999976885812014, 1e-11);
        close(chi2_sf(200.0, 50), 7.857610724654791e-20, 1e-9);
    }

    #[test]
    fn kolmogorov_sf_matches_scipy() {
        // python3 -c "from scipy.stats import kstwobign; print([float(kstwobign.sf(x)) for x in (0.3, 0.8, 1.0, 1.18, 1.5, 2.5)])"
        close(kolmogorov_sf(0.3), 0.9999906941986655, 1e-11);
        close(kolmogorov_sf(0.8), 0.5441424115741981, 1e-11);
        close(kolmogorov_sf(1.0), 0.26999967167735456, 1e-11);
        close(kolmogorov_sf(1.18), 0.1234538094297657, 1e-11);
        close(kolmogorov_sf(1.5), 0.022217962616525127, 1e-11);
        close(kolmogorov_sf(2.5), 7.453306344157342e-06, 1e-10);
        assert_eq!(kolmogorov_sf(0.0), 1.0);
    }
}
