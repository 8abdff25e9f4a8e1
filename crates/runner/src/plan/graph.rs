//! The DAG: step-level cycle detection (reported against the manifest),
//! instance-level edges, topological order and `--only` selection.

use std::collections::HashMap;

use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};

use super::error::PlanError;
use super::expand::{combinations, instance, Instance, InstanceId, PlannedInput};
use crate::manifest::{did_you_mean, Job, ManifestError, Problem, Spanned, StepId};

/// Most instances one plan holds.
pub const MAX_INSTANCES: usize = 200_000;

/// Which steps to plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Selection {
    /// Every step.
    #[default]
    All,
    /// These steps (ids, or instance names such as `test[case=a]`) and
    /// everything they depend on.
    Only(Vec<String>),
}

/// A job's instances as a DAG, ready for the scheduler.
#[derive(Debug)]
pub struct Plan {
    name: String,
    instances: Vec<Instance>,
    /// Dependents of each instance (the reverse of `Instance::deps`).
    dependents: Vec<Vec<InstanceId>>,
    order: Vec<InstanceId>,
    by_name: HashMap<String, InstanceId>,
}

impl Plan {
    /// Expands and orders `job`, keeping only what `selection` needs.
    pub fn new(job: &Job, selection: &Selection) -> Result<Plan, PlanError> {
        check_cycles(job)?;
        let wanted = selected_steps(job, selection)?;

        // Instances of each step, in manifest order.
        let mut instances: Vec<Instance> = Vec::new();
        let mut of_step: HashMap<&str, Vec<InstanceId>> = HashMap::new();
        for (id, step) in &job.steps {
            if !wanted.get(id.as_str()).copied().unwrap_or(false) {
                continue;
            }
            let settings = job.settings(step);
            let ids = of_step.entry(id.as_str()).or_default();
            for combo in combinations(step) {
                ids.push(InstanceId(instances.len()));
                instances.push(instance(job, id, step, combo, &settings));
                if instances.len() > MAX_INSTANCES {
                    return Err(PlanError::TooLarge {
                        count: instances.len(),
                        max: MAX_INSTANCES,
                    });
                }
            }
        }

        // Edges: every instance of a step waits for every instance of each
        // step it depends on (fan-in).
        for (id, step) in &job.steps {
            let Some(mine) = of_step.get(id.as_str()) else {
                continue;
            };
            let mut deps: Vec<InstanceId> = Vec::new();
            for dep in step.dependencies() {
                deps.extend(of_step.get(dep.as_str()).into_iter().flatten().copied());
            }
            for &i in mine {
                let inst = &mut instances[i.0];
                inst.deps.clone_from(&deps);
                for input in &mut inst.inputs {
                    if let PlannedInput::Step { step, from, .. } = input {
                        from.clone_from(&of_step.get(step.as_str()).cloned().unwrap_or_default());
                    }
                }
            }
        }

        if let Selection::Only(names) = selection {
            if names.iter().any(|n| n.contains('[')) {
                instances = only_instances(instances, names)?;
            }
        }

        let mut graph: DiGraph<(), ()> = DiGraph::with_capacity(instances.len(), instances.len());
        for _ in &instances {
            graph.add_node(());
        }
        let mut dependents = vec![Vec::new(); instances.len()];
        for (i, inst) in instances.iter().enumerate() {
            for d in &inst.deps {
                graph.add_edge(NodeIndex::new(d.0), NodeIndex::new(i), ());
                dependents[d.0].push(InstanceId(i));
            }
        }
        // Steps are acyclic, so instances are too; map a failure anyway
        // rather than trusting that.
        let order = toposort(&graph, None)
            .map_err(|c| PlanError::InstanceCycle {
                instance: instances[c.node_id().index()].name.clone(),
            })?
            .into_iter()
            .map(|n| InstanceId(n.index()))
            .collect();
        let by_name = instances
            .iter()
            .enumerate()
            .map(|(i, inst)| (inst.name.clone(), InstanceId(i)))
            .collect();
        Ok(Plan {
            name: job.name.to_string(),
            instances,
            dependents,
            order,
            by_name,
        })
    }

    /// The job's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every instance, in manifest order (indexed by [`InstanceId`]).
    pub fn instances(&self) -> &[Instance] {
        &self.instances
    }

    /// One instance.
    pub fn instance(&self, id: InstanceId) -> &Instance {
        &self.instances[id.0]
    }

    /// An instance by name (`test[case=a]`).
    pub fn find(&self, name: &str) -> Option<InstanceId> {
        self.by_name.get(name).copied()
    }

    /// Instances in an order where each comes after its dependencies.
    pub fn topological_order(&self) -> &[InstanceId] {
        &self.order
    }

    /// The instances that depend directly on `id`.
    pub fn dependents(&self, id: InstanceId) -> &[InstanceId] {
        &self.dependents[id.0]
    }

    /// How many instances the plan has.
    pub fn len(&self) -> usize {
        self.instances.len()
    }

    /// Whether the plan has no instances.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// The most instances that can run at once if nothing else limits them:
    /// the largest number sharing one depth (a hint for the warm pool).
    pub fn width(&self) -> usize {
        let depth = self.depths();
        let mut count: HashMap<usize, usize> = HashMap::new();
        for d in depth {
            *count.entry(d).or_default() += 1;
        }
        count.values().copied().max().unwrap_or(0)
    }

    /// Each instance's depth: 0 without dependencies, else one more than
    /// its deepest dependency.
    pub fn depths(&self) -> Vec<usize> {
        let mut depth = vec![0usize; self.instances.len()];
        for &id in &self.order {
            let d = self.instances[id.0]
                .deps
                .iter()
                .map(|p| depth[p.0] + 1)
                .max()
                .unwrap_or(0);
            depth[id.0] = d;
        }
        depth
    }
}

/// Rejects dependency cycles between steps, naming the whole cycle.
fn check_cycles(job: &Job) -> Result<(), PlanError> {
    let ids: Vec<&Spanned<StepId>> = job.steps.keys().collect();
    let index: HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    // Edge a → b: step a needs step b.
    let mut graph: DiGraph<(), ()> = DiGraph::with_capacity(ids.len(), ids.len());
    for _ in &ids {
        graph.add_node(());
    }
    for (a, step) in job.steps.values().enumerate() {
        for dep in step.dependencies() {
            if let Some(&b) = index.get(dep.as_str()) {
                graph.add_edge(NodeIndex::new(a), NodeIndex::new(b), ());
            }
        }
    }
    if toposort(&graph, None).is_ok() {
        return Ok(());
    }
    // Smallest-index step of the first cyclic component, then the cycle
    // through it, walking only inside the component.
    let Some(scc) = tarjan_scc(&graph)
        .into_iter()
        .filter(|c| c.len() > 1 || graph.contains_edge(c[0], c[0]))
        .min_by_key(|c| c.iter().map(|n| n.index()).min())
    else {
        return Ok(());
    };
    let cycle = cycle_in(&graph, &scc);
    let names: Vec<String> = cycle.iter().map(|&i| ids[i].to_string()).collect();
    let mut shown = names.clone();
    shown.push(names[0].clone());
    let step_of = |i: usize| job.steps.get_index(i).map(|(_, s)| s);
    // Label each `needs` entry that closes an edge of the cycle.
    let mut labels = Vec::new();
    for (k, &a) in cycle.iter().enumerate() {
        let b = cycle[(k + 1) % cycle.len()];
        let dep_span = step_of(a)
            .and_then(|s| {
                s.dependencies()
                    .into_iter()
                    .find(|d| d.as_str() == ids[b].as_str())
            })
            .map(|d| d.span)
            .unwrap_or(ids[a].span);
        labels.push((dep_span, format!("`{}` needs `{}`", ids[a], ids[b])));
    }
    let (first_span, first_label) = labels.remove(0);
    let mut p = Problem::new(
        "plan::cycle",
        format!("dependency cycle: {}", shown.join(" → ")),
        first_span,
        first_label,
    )
    .with_field(format!("steps.{}", ids[cycle[0]]))
    .with_help("steps cannot wait for each other; remove one of these dependencies");
    for (s, l) in labels {
        p = p.with_note(s, l);
    }
    Err(PlanError::Cycle(ManifestError::invalid(
        &job.source,
        vec![p],
    )))
}

/// A cycle through the smallest node of a strongly connected component.
fn cycle_in(graph: &DiGraph<(), ()>, scc: &[NodeIndex]) -> Vec<usize> {
    let Some(&start) = scc.iter().min() else {
        return Vec::new();
    };
    if graph.contains_edge(start, start) {
        return vec![start.index()];
    }
    let inside: std::collections::HashSet<NodeIndex> = scc.iter().copied().collect();
    // Breadth-first from start's successors back to start gives a shortest
    // cycle, which is the easiest to read.
    let mut parent: HashMap<NodeIndex, NodeIndex> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        let mut next: Vec<NodeIndex> = graph.neighbors(n).filter(|m| inside.contains(m)).collect();
        next.sort();
        for m in next {
            if m == start {
                let mut path = vec![n];
                let mut cur = n;
                while let Some(&p) = parent.get(&cur) {
                    path.push(p);
                    cur = p;
                }
                path.reverse();
                return path.into_iter().map(NodeIndex::index).collect();
            }
            if m != start && !parent.contains_key(&m) {
                parent.insert(m, n);
                queue.push_back(m);
            }
        }
    }
    vec![start.index()]
}

/// Narrows to the named instances (a plain step id names all of its
/// instances) and their transitive dependencies, renumbering the rest.
fn only_instances(instances: Vec<Instance>, names: &[String]) -> Result<Vec<Instance>, PlanError> {
    let mut keep = vec![false; instances.len()];
    let mut stack = Vec::new();
    for name in names {
        let hits: Vec<usize> = instances
            .iter()
            .enumerate()
            .filter(|(_, i)| i.name == *name || i.step.as_str() == name)
            .map(|(n, _)| n)
            .collect();
        if hits.is_empty() {
            let suggestion =
                did_you_mean(name, instances.iter().map(|i| i.name.as_str())).map(str::to_owned);
            return Err(PlanError::UnknownSelection {
                name: name.clone(),
                suggestion,
            });
        }
        stack.extend(hits);
    }
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut keep[i], true) {
            continue;
        }
        stack.extend(instances[i].deps.iter().map(|d| d.0));
    }
    let mut new_index = vec![None; instances.len()];
    let mut next = 0;
    for (i, k) in keep.iter().enumerate() {
        if *k {
            new_index[i] = Some(InstanceId(next));
            next += 1;
        }
    }
    let remap = |ids: &[InstanceId]| -> Vec<InstanceId> {
        ids.iter().filter_map(|d| new_index[d.0]).collect()
    };
    let mut out = Vec::with_capacity(next);
    for (i, mut inst) in instances.into_iter().enumerate() {
        if !keep[i] {
            continue;
        }
        inst.deps = remap(&inst.deps);
        for input in &mut inst.inputs {
            if let PlannedInput::Step { from, .. } = input {
                *from = remap(from);
            }
        }
        out.push(inst);
    }
    Ok(out)
}

/// Which steps the selection keeps: the named ones and their transitive
/// dependencies.
fn selected_steps<'j>(
    job: &'j Job,
    selection: &Selection,
) -> Result<HashMap<&'j str, bool>, PlanError> {
    let names = match selection {
        Selection::All => return Ok(job.steps.keys().map(|k| (k.as_str(), true)).collect()),
        Selection::Only(names) => names,
    };
    let mut keep: HashMap<&str, bool> = HashMap::new();
    let mut stack: Vec<&str> = Vec::new();
    for name in names {
        let step_id = name.split_once('[').map_or(name.as_str(), |(s, _)| s);
        let Some((id, _)) = job.steps.get_key_value(step_id) else {
            let suggestion =
                did_you_mean(step_id, job.steps.keys().map(|k| k.as_str())).map(str::to_owned);
            return Err(PlanError::UnknownSelection {
                name: name.clone(),
                suggestion,
            });
        };
        stack.push(id.as_str());
    }
    while let Some(id) = stack.pop() {
        if keep.insert(id, true).is_some() {
            continue;
        }
        if let Some((key, step)) = job.steps.get_key_value(id) {
            let _ = key;
            for dep in step.dependencies() {
                if let Some((k, _)) = job.steps.get_key_value(dep.as_str()) {
                    stack.push(k.as_str());
                }
            }
        }
    }
    Ok(keep)
}
