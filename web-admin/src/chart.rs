//! The chart of a message's deliveries per state over time, one per channel, drawn on the
//! server as SVG: no script, and readable without colour (each line is named in the
//! legend with its last count, and the counts table above says the same in numbers).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use tidings_core::store::{ChannelSeries, StateSeries};
use tidings_core::DeliveryState;

use crate::i18n::Lang;

/// The drawing's size, in SVG units; it scales to the page's width.
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 200.0;
/// Room for the axis labels.
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 24.0;
const TOP: f64 = 8.0;

/// A colour per state, told apart also by the legend's order and names.
fn colour(state: DeliveryState) -> &'static str {
    match state {
        DeliveryState::Created => "#8a939c",
        DeliveryState::Queued => "#b7791f",
        DeliveryState::Sent => "#0b5cad",
        DeliveryState::Delivered => "#2f855a",
        DeliveryState::Acked => "#1b4332",
        DeliveryState::Failed => "#a4161a",
        DeliveryState::Cancelled => "#6b46c1",
        DeliveryState::Suppressed => "#4a5560",
    }
}

/// "+90 s", "+12 min", "+2 h".
fn elapsed(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("+{s} s"),
        s if s < 7_200 => format!("+{} min", s / 60),
        s => format!("+{} h", s / 3_600),
    }
}

/// The figures of every channel of `series`, as HTML in `lang`.
pub fn figures(series: &StateSeries, lang: Lang) -> String {
    let mut html = String::new();
    for channel in &series.channels {
        figure(&mut html, series, channel, lang);
    }
    html
}

fn figure(html: &mut String, series: &StateSeries, channel: &ChannelSeries, lang: Lang) {
    let name = channel.channel.as_str();
    let said = lang.channel(&channel.channel);
    let states: BTreeSet<DeliveryState> = std::iter::once(&channel.start)
        .chain(&channel.steps)
        .flat_map(|step| step.keys().copied())
        .collect();
    let most = std::iter::once(&channel.start)
        .chain(&channel.steps)
        .flat_map(|step| step.values().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    let steps = channel.steps.len().max(1);
    let span = series.step_seconds * steps as i64;
    let x = |i: usize| LEFT + (WIDTH - LEFT - 8.0) * (i as f64 + 1.0) / steps as f64;
    let y = |n: i64| TOP + (HEIGHT - TOP - BOTTOM) * (1.0 - n as f64 / most as f64);
    let _ = write!(
        html,
        "<figure class=\"chart\" data-channel=\"{name}\"><figcaption>{}</figcaption>\
         <svg viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-labelledby=\"chart-{name}\">\
         <title id=\"chart-{name}\">{}</title>\
         <line x1=\"{LEFT}\" y1=\"{bottom}\" x2=\"{right}\" y2=\"{bottom}\" class=\"axis\"/>\
         <line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{bottom}\" class=\"axis\"/>\
         <text x=\"{label}\" y=\"{top_label}\" text-anchor=\"end\">{most}</text>\
         <text x=\"{label}\" y=\"{bottom}\" text-anchor=\"end\">0</text>\
         <text x=\"{LEFT}\" y=\"{HEIGHT}\">0 s</text>\
         <text x=\"{right}\" y=\"{HEIGHT}\" text-anchor=\"end\">{}</text>",
        lang.tf("{}: deliveries in each state over time", &[&said]),
        lang.tf(
            "{} deliveries per state, from the first change to {}",
            &[&said, &elapsed(span)]
        ),
        elapsed(span),
        bottom = HEIGHT - BOTTOM,
        right = WIDTH - 8.0,
        label = LEFT - 6.0,
        top_label = TOP + 10.0,
    );
    for state in &states {
        let start = channel.start.get(state).copied().unwrap_or(0);
        let mut points = format!("{LEFT:.1},{:.1}", y(start));
        for (i, step) in channel.steps.iter().enumerate() {
            let n = step.get(state).copied().unwrap_or(0);
            let _ = write!(points, " {:.1},{:.1}", x(i), y(n));
        }
        let _ = write!(
            html,
            "<polyline points=\"{points}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2.5\" data-state=\"{state}\"/>",
            colour(*state)
        );
    }
    html.push_str("</svg><ul class=\"legend\">");
    let last = channel.steps.last();
    for state in &states {
        let n = last.and_then(|step| step.get(state)).copied().unwrap_or(0);
        let _ = write!(
            html,
            "<li><span class=\"swatch\" style=\"background:{}\"></span>{}: {n}</li>",
            colour(*state),
            lang.state(state)
        );
    }
    html.push_str("</ul></figure>");
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::Utc;
    use tidings_core::Channel;

    use super::*;

    #[test]
    fn each_state_is_a_line_named_with_its_last_count() {
        let step =
            |pairs: &[(DeliveryState, i64)]| pairs.iter().copied().collect::<BTreeMap<_, _>>();
        let series = StateSeries {
            start: Utc::now(),
            step_seconds: 30,
            channels: vec![ChannelSeries {
                channel: Channel::Sms,
                start: step(&[(DeliveryState::Created, 10)]),
                steps: vec![
                    step(&[(DeliveryState::Created, 2), (DeliveryState::Sent, 8)]),
                    step(&[(DeliveryState::Sent, 3), (DeliveryState::Delivered, 7)]),
                ],
            }],
        };
        let html = figures(&series, Lang::En);
        assert_eq!(html.matches("<polyline").count(), 3, "{html}");
        assert!(html.contains("DELIVERED: 7"), "{html}");
        assert!(html.contains("CREATED: 0"), "{html}");
        assert!(html.contains("+60 s"), "{html}");
        // The most at once (all ten CREATED at the start) is the top of the scale.
        assert!(html.contains(">10</text>"), "{html}");
    }

    #[test]
    fn elapsed_time_reads_in_the_largest_fitting_unit() {
        assert_eq!(elapsed(45), "+45 s");
        assert_eq!(elapsed(600), "+10 min");
        assert_eq!(elapsed(10_800), "+3 h");
    }
}
