//! The matrix's source of truth (`ci/matrix.toml`) and its expansion into
//! combinations, checked against the templates' own placeholders.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;

use crate::tools::Release;

/// `ci/matrix.toml`, plus the placeholders each template declares.
#[derive(Debug, Clone)]
pub struct Matrix {
    /// The cargo-generate releases every combination is generated with,
    /// oldest first.
    pub cargo_generate: Vec<Release>,
    /// The templates, in file order.
    pub templates: Vec<Template>,
}

/// One template's entry in the matrix.
#[derive(Debug, Clone)]
pub struct Template {
    /// Folder name under `templates/`, also its topology name.
    pub name: String,
    /// Service arguments of the smoke run.
    pub smoke_args: Vec<String>,
    /// Shared chassis parts this template carries on top of `chassis/`:
    /// part `async` is the folder `chassis-async/`.
    pub chassis_parts: Vec<String>,
    /// Axes multiplied into the product.
    pub axes: BTreeMap<String, Vec<String>>,
    /// Partial combinations removed from the product.
    pub exclude: Vec<BTreeMap<String, String>>,
    /// Combinations added on top of the template defaults.
    pub extra: Vec<BTreeMap<String, String>>,
    /// The template's placeholders, read from its own `cargo-generate.toml`.
    pub placeholders: BTreeMap<String, Placeholder>,
}

/// A placeholder as declared in a template's `cargo-generate.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    /// The value used when none is given.
    pub default: String,
    /// The allowed values: the `choices`, `true`/`false` for a bool, or `None`
    /// for free text checked by a regex.
    pub choices: Option<Vec<String>>,
}

/// One way to generate a template: the placeholder values passed with `-d`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Combination {
    /// Template name.
    pub template: String,
    /// Placeholder values; those not listed take the template default.
    pub values: BTreeMap<String, String>,
}

/// Which part of the matrix to run.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// The full product of the axes instead of the covering set.
    pub full: bool,
    /// Only this template.
    pub template: Option<String>,
    /// Only the combination of all defaults, per template.
    pub defaults_only: bool,
    /// Only these combination ids.
    pub only: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MatrixFile {
    cargo_generate: Vec<Release>,
    template: Vec<TemplateEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateEntry {
    name: String,
    smoke_args: Vec<String>,
    #[serde(default)]
    chassis_parts: Vec<String>,
    #[serde(default)]
    axes: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    exclude: Vec<BTreeMap<String, String>>,
    #[serde(default)]
    extra: Vec<BTreeMap<String, String>>,
}

impl Matrix {
    /// Every template folder of the repository at `repo`, with the chassis
    /// parts it carries.
    pub fn chassis_carriers(&self, repo: &Path) -> Vec<crate::chassis::Carrier> {
        self.templates
            .iter()
            .map(|t| crate::chassis::Carrier {
                dir: repo.join("templates").join(&t.name),
                parts: t.chassis_parts.clone(),
            })
            .collect()
    }

    /// Path of the source of truth inside the repository.
    pub fn path(repo: &Path) -> PathBuf {
        repo.join("ci/matrix.toml")
    }

    /// Reads the matrix and every template's placeholders, and checks that
    /// they agree (see [`Matrix::validate`]).
    pub fn load(repo: &Path) -> Result<Self> {
        let path = Self::path(repo);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let file: MatrixFile =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let templates = file
            .template
            .into_iter()
            .map(|entry| {
                let placeholders = read_placeholders(&repo.join("templates").join(&entry.name))?;
                Ok(Template {
                    name: entry.name,
                    smoke_args: entry.smoke_args,
                    chassis_parts: entry.chassis_parts,
                    axes: entry.axes,
                    exclude: entry.exclude,
                    extra: entry.extra,
                    placeholders,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let matrix = Self {
            cargo_generate: file.cargo_generate,
            templates,
        };
        matrix.validate()?;
        Ok(matrix)
    }

    /// Checks that the matrix exercises every value of every placeholder and
    /// names nothing the templates do not have.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            !self.cargo_generate.is_empty(),
            "ci/matrix.toml names no cargo-generate release"
        );
        for template in &self.templates {
            let name = &template.name;
            for (axis, values) in &template.axes {
                let placeholder = template.placeholders.get(axis).with_context(|| {
                    format!("{name}: axis `{axis}` is not a placeholder of the template")
                })?;
                if let Some(choices) = &placeholder.choices {
                    for value in values {
                        ensure!(
                            choices.contains(value),
                            "{name}: `{axis}` has no value `{value}`"
                        );
                    }
                    for choice in choices {
                        ensure!(
                            values.contains(choice),
                            "{name}: value `{choice}` of `{axis}` is never tested; add it to the axis"
                        );
                    }
                }
            }
            for (placeholder, spec) in &template.placeholders {
                if template.axes.contains_key(placeholder) {
                    continue;
                }
                let in_extras: Vec<&String> = template
                    .extra
                    .iter()
                    .filter_map(|extra| extra.get(placeholder))
                    .collect();
                ensure!(
                    !in_extras.is_empty(),
                    "{name}: placeholder `{placeholder}` is in no axis and no extra combination"
                );
                for choice in spec.choices.iter().flatten() {
                    ensure!(
                        choice == &spec.default || in_extras.contains(&choice),
                        "{name}: value `{choice}` of `{placeholder}` is never tested; \
                         add an extra combination or an axis"
                    );
                }
            }
            for partial in template.exclude.iter().chain(&template.extra) {
                for key in partial.keys() {
                    ensure!(
                        template.placeholders.contains_key(key),
                        "{name}: `{key}` is not a placeholder"
                    );
                }
            }
        }
        Ok(())
    }

    /// Every combination of the selection, in a stable order.
    pub fn combinations(&self, selection: &Selection) -> Result<Vec<Combination>> {
        if let Some(wanted) = &selection.template
            && !self.templates.iter().any(|t| &t.name == wanted)
        {
            let known: Vec<_> = self.templates.iter().map(|t| t.name.as_str()).collect();
            bail!(
                "no template `{wanted}` in the matrix (known: {})",
                known.join(", ")
            );
        }
        let mut all = Vec::new();
        for template in &self.templates {
            if selection
                .template
                .as_ref()
                .is_some_and(|wanted| wanted != &template.name)
            {
                continue;
            }
            if selection.defaults_only {
                all.push(template.defaults());
            } else if selection.full {
                all.extend(template.combinations());
            } else {
                all.extend(template.covering_set());
            }
        }
        if !selection.only.is_empty() {
            for id in &selection.only {
                ensure!(
                    all.iter().any(|c| &c.id() == id),
                    "no combination `{id}`; see `cargo ci list`"
                );
            }
            all.retain(|c| selection.only.contains(&c.id()));
        }
        Ok(all)
    }

    /// The template entry called `name`.
    pub fn template(&self, name: &str) -> Result<&Template> {
        self.templates
            .iter()
            .find(|t| t.name == name)
            .with_context(|| format!("no template `{name}`"))
    }
}

impl Template {
    /// The product of the axes, minus exclusions, plus the extras.
    pub fn combinations(&self) -> Vec<Combination> {
        self.product()
            .into_iter()
            .chain(self.extra.iter().cloned())
            .map(|values| self.combination(values))
            .collect()
    }

    /// A small set that still covers every value of every axis and every
    /// pair of values of any two axes (as far as the exclusions allow), plus
    /// the defaults and the extras. A bug that needs two options to meet
    /// shows up here as surely as in the full product, at a fraction of the
    /// builds; three-way interactions are left to the full product.
    ///
    /// Greedy: start from the defaults, then keep adding the combination of
    /// the product that covers the most pairs not yet covered (the first
    /// such in product order, so the set is stable).
    pub fn covering_set(&self) -> Vec<Combination> {
        let product = self.product();
        let mut uncovered: BTreeSet<Requirement> = product.iter().flat_map(requirements).collect();
        let defaults = self.defaults().values;
        let mut chosen = Vec::new();
        if product.contains(&defaults) {
            for requirement in requirements(&defaults) {
                uncovered.remove(&requirement);
            }
            chosen.push(defaults);
        }
        while !uncovered.is_empty() {
            let mut best: Option<(&BTreeMap<String, String>, usize)> = None;
            for candidate in &product {
                let gain = requirements(candidate)
                    .iter()
                    .filter(|r| uncovered.contains(*r))
                    .count();
                if gain > best.map_or(0, |(_, most)| most) {
                    best = Some((candidate, gain));
                }
            }
            let Some((next, _)) = best else { break };
            for requirement in requirements(next) {
                uncovered.remove(&requirement);
            }
            chosen.push(next.clone());
        }
        chosen
            .into_iter()
            .chain(self.extra.iter().cloned())
            .map(|values| self.combination(values))
            .collect()
    }

    fn combination(&self, values: BTreeMap<String, String>) -> Combination {
        Combination {
            template: self.name.clone(),
            values,
        }
    }

    /// The product of the axes, minus the exclusions.
    fn product(&self) -> Vec<BTreeMap<String, String>> {
        let mut product = vec![BTreeMap::new()];
        for (axis, values) in &self.axes {
            product = product
                .into_iter()
                .flat_map(|partial: BTreeMap<String, String>| {
                    values.iter().map(move |value| {
                        let mut next = partial.clone();
                        next.insert(axis.clone(), value.clone());
                        next
                    })
                })
                .collect();
        }
        product.retain(|values| {
            !self
                .exclude
                .iter()
                .any(|excluded| matches_partial(values, excluded))
        });
        product
    }

    /// The combination that sets every axis to its template default.
    pub fn defaults(&self) -> Combination {
        let values = self
            .axes
            .keys()
            .map(|axis| (axis.clone(), self.placeholders[axis].default.clone()))
            .collect();
        Combination {
            template: self.name.clone(),
            values,
        }
    }
}

impl Combination {
    /// Stable, human-readable id, e.g. `mpsc-fan-in:batching=false,runtime=multi_thread`.
    pub fn id(&self) -> String {
        self.to_string()
    }

    /// The value this combination passes for `placeholder`, if any.
    pub fn value(&self, placeholder: &str) -> Option<&str> {
        self.values.get(placeholder).map(String::as_str)
    }
}

impl fmt::Display for Combination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let values: Vec<String> = self
            .values
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        write!(f, "{}:{}", self.template, values.join(","))
    }
}

/// One value of one axis, or one pair of values of two axes, that the
/// covering set must contain somewhere.
type Requirement = Vec<(String, String)>;

/// Every single value and every pair of values `values` covers.
fn requirements(values: &BTreeMap<String, String>) -> Vec<Requirement> {
    let entries: Vec<(String, String)> = values.clone().into_iter().collect();
    let mut all: Vec<Requirement> = entries.iter().map(|entry| vec![entry.clone()]).collect();
    for (i, first) in entries.iter().enumerate() {
        for second in &entries[i + 1..] {
            all.push(vec![first.clone(), second.clone()]);
        }
    }
    all
}

fn matches_partial(values: &BTreeMap<String, String>, partial: &BTreeMap<String, String>) -> bool {
    partial
        .iter()
        .all(|(key, value)| values.get(key) == Some(value))
}

/// Reads `[placeholders.*]` from a template's `cargo-generate.toml`.
fn read_placeholders(template_dir: &Path) -> Result<BTreeMap<String, Placeholder>> {
    let path = template_dir.join("cargo-generate.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let Some(placeholders) = table.get("placeholders").and_then(toml::Value::as_table) else {
        return Ok(BTreeMap::new());
    };
    placeholders
        .iter()
        .map(|(name, spec)| {
            let default = match spec.get("default") {
                Some(toml::Value::String(s)) => s.clone(),
                Some(toml::Value::Boolean(b)) => b.to_string(),
                _ => bail!("{}: placeholder `{name}` needs a default", path.display()),
            };
            let choices = match (
                spec.get("type").and_then(toml::Value::as_str),
                spec.get("choices"),
            ) {
                (Some("bool"), _) => Some(vec!["true".to_owned(), "false".to_owned()]),
                (_, Some(toml::Value::Array(choices))) => Some(
                    choices
                        .iter()
                        .filter_map(|c| c.as_str().map(str::to_owned))
                        .collect(),
                ),
                _ => None,
            };
            Ok((name.clone(), Placeholder { default, choices }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> Template {
        let choice = |default: &str, choices: &[&str]| Placeholder {
            default: default.to_owned(),
            choices: Some(choices.iter().map(|c| c.to_string()).collect()),
        };
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        Template {
            name: "t".to_owned(),
            smoke_args: vec![],
            chassis_parts: vec![],
            axes: [("a", vec!["1", "2"]), ("b", vec!["x", "y", "z"])]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
                .collect(),
            exclude: vec![map(&[("a", "2"), ("b", "z")])],
            extra: vec![map(&[("n", "1")])],
            placeholders: [
                ("a".to_owned(), choice("1", &["1", "2"])),
                ("b".to_owned(), choice("y", &["x", "y", "z"])),
                (
                    "n".to_owned(),
                    Placeholder {
                        default: "64".to_owned(),
                        choices: None,
                    },
                ),
            ]
            .into_iter()
            .collect(),
        }
    }

    fn matrix(template: Template) -> Matrix {
        Matrix {
            cargo_generate: vec![Release {
                version: "0".into(),
                install: crate::tools::InstallMethod::Locked,
            }],
            templates: vec![template],
        }
    }

    /// Every pair of values of two axes that some allowed combination has.
    fn pairs(combinations: &[Combination]) -> BTreeSet<Requirement> {
        combinations
            .iter()
            .flat_map(|c| requirements(&c.values))
            .filter(|r| r.len() == 2)
            .collect()
    }

    #[test]
    fn the_covering_set_has_every_pair_the_product_has_and_fewer_combinations() {
        let mut t = template();
        t.axes.insert("c".into(), vec!["p".into(), "q".into()]);
        t.axes.insert("d".into(), vec!["u".into(), "v".into()]);
        for (name, choices) in [("c", ["p", "q"]), ("d", ["u", "v"])] {
            t.placeholders.insert(
                name.into(),
                Placeholder {
                    default: choices[0].into(),
                    choices: Some(choices.iter().map(|c| c.to_string()).collect()),
                },
            );
        }
        let full = t.combinations();
        let covering = t.covering_set();
        assert_eq!(pairs(&covering), pairs(&full));
        assert!(
            covering.len() < full.len(),
            "{} of {}",
            covering.len(),
            full.len()
        );
        assert_eq!(covering[0], t.defaults(), "the defaults come first");
        assert!(covering.contains(&t.combination(t.extra[0].clone())));
        let excluded = BTreeMap::from([("a".into(), "2".into()), ("b".into(), "z".into())]);
        assert!(
            covering
                .iter()
                .all(|c| !matches_partial(&c.values, &excluded)),
            "no excluded combination"
        );
    }

    #[test]
    fn expands_the_product_minus_exclusions_plus_extras() {
        let ids: Vec<String> = template()
            .combinations()
            .iter()
            .map(Combination::id)
            .collect();
        assert_eq!(
            ids,
            [
                "t:a=1,b=x",
                "t:a=1,b=y",
                "t:a=1,b=z",
                "t:a=2,b=x",
                "t:a=2,b=y",
                "t:n=1"
            ]
        );
    }

    #[test]
    fn defaults_take_each_placeholder_default() {
        assert_eq!(template().defaults().id(), "t:a=1,b=y");
    }

    #[test]
    fn an_untested_choice_is_refused() {
        let mut t = template();
        t.axes.get_mut("b").unwrap().retain(|v| v != "z");
        let error = matrix(t).validate().unwrap_err().to_string();
        assert!(
            error.contains("value `z` of `b` is never tested"),
            "{error}"
        );
    }

    #[test]
    fn a_placeholder_in_no_axis_or_extra_is_refused() {
        let mut t = template();
        t.extra.clear();
        let error = matrix(t).validate().unwrap_err().to_string();
        assert!(error.contains("placeholder `n`"), "{error}");
    }

    #[test]
    fn a_choice_left_out_of_the_extras_is_refused() {
        let mut t = template();
        t.placeholders.insert(
            "license".into(),
            Placeholder {
                default: "MIT".into(),
                choices: Some(vec!["MIT".into(), "proprietary".into()]),
            },
        );
        t.extra
            .push(BTreeMap::from([("license".into(), "MIT".into())]));
        let error = matrix(t.clone()).validate().unwrap_err().to_string();
        assert!(
            error.contains("value `proprietary` of `license`"),
            "{error}"
        );
        t.extra
            .push(BTreeMap::from([("license".into(), "proprietary".into())]));
        matrix(t).validate().unwrap();
    }

    #[test]
    fn selection_by_unknown_id_or_template_is_an_error() {
        let m = matrix(template());
        let only = Selection {
            only: vec!["t:a=9".into()],
            ..Selection::default()
        };
        assert!(m.combinations(&only).is_err());
        let other = Selection {
            template: Some("nope".into()),
            ..Selection::default()
        };
        assert!(m.combinations(&other).is_err());
        let one = Selection {
            only: vec!["t:n=1".into()],
            ..Selection::default()
        };
        assert_eq!(m.combinations(&one).unwrap().len(), 1);
    }
}
