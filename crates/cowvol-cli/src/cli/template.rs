//! `cowvol template ...`: create, list, info, delete.

use super::args::TemplateCmd;
use super::error::{out_err, CliResult, LibContext};
use super::fmt::{self, Align, Table};
use super::json::TemplateJson;
use super::{close, find_template, resolve_snapshot_anywhere, resolve_template, Ctx};
use cowvol::TemplateOptions;
use serde::Serialize;

/// Runs a template subcommand.
pub fn run(ctx: &Ctx, cmd: TemplateCmd) -> CliResult {
    match cmd {
        TemplateCmd::Create { name, from_snapshot, volume, description, labels, owner } => {
            let opts = TemplateOptions { name, description, labels: labels.into_iter().collect(), owner };
            create(ctx, opts, &from_snapshot, volume.as_deref())
        }
        TemplateCmd::List => list(ctx),
        TemplateCmd::Info { template } => info(ctx, &template),
        TemplateCmd::Delete { template } => delete(ctx, &template),
    }
}

#[derive(Serialize)]
struct TemplateOut {
    template: TemplateJson,
}

fn create(ctx: &Ctx, opts: TemplateOptions, snapshot: &str, volume: Option<&str>) -> CliResult {
    let store = ctx.open_store()?;
    let s = resolve_snapshot_anywhere(&store, snapshot, volume)?;
    let what = format!("creating template {:?} from snapshot {:?} ({}) of {}", opts.name, s.name, s.id, s.volume_id);
    let t = store.create_template(s.id, opts).ctx(what)?;
    if ctx.json {
        ctx.print_json(&TemplateOut { template: TemplateJson::of(&store, &t) })?;
    } else {
        ctx.say(format_args!(
            "created template {} ({}) from snapshot {} ({}) of {}: {}",
            t.name,
            t.id,
            s.name,
            s.id,
            super::snapshot::volume_label(&store, &s),
            fmt::bytes(t.size_bytes)
        ))?;
    }
    close(store)
}

fn list(ctx: &Ctx) -> CliResult {
    let store = ctx.open_store()?;
    let all: Vec<TemplateJson> = store.list_templates().iter().map(|t| TemplateJson::of(&store, t)).collect();
    if ctx.json {
        #[derive(Serialize)]
        struct Out {
            templates: Vec<TemplateJson>,
        }
        ctx.print_json(&Out { templates: all })?;
    } else {
        let mut t = Table::new(&[
            ("ID", Align::Left),
            ("NAME", Align::Left),
            ("SIZE", Align::Right),
            ("SOURCE", Align::Left),
            ("VOLUMES", Align::Right),
            ("CREATED", Align::Left),
            ("DESCRIPTION", Align::Left),
        ]);
        for j in &all {
            t.row(vec![
                j.id.clone(),
                j.name.clone(),
                fmt::bytes(j.size_bytes),
                format!("{}@{}", j.source_volume_id, j.source_snapshot_id),
                j.volume_count.to_string(),
                fmt::timestamp(j.created_at),
                j.description.clone(),
            ]);
        }
        t.print(&mut ctx.out(), "no templates").map_err(out_err)?;
    }
    close(store)
}

fn info(ctx: &Ctx, template: &str) -> CliResult {
    let store = ctx.open_store()?;
    let t = resolve_template(&store, template)?;
    let j = TemplateJson::of(&store, &t);
    if ctx.json {
        ctx.print_json(&TemplateOut { template: j })?;
    } else {
        let (vol, snap) = t.source;
        let source = match store.snapshot(snap) {
            Ok(s) => format!("snapshot {} ({snap}) of {}", s.name, super::snapshot::volume_label(&store, &s)),
            Err(_) => format!("snapshot {snap} of {vol} (since deleted)"),
        };
        fmt::key_values(
            &mut ctx.out(),
            &[
                ("id", t.id.to_string()),
                ("name", t.name.clone()),
                ("size", format!("{} ({} bytes)", fmt::bytes(t.size_bytes), t.size_bytes)),
                ("created", fmt::timestamp(t.created_at)),
                ("source", source),
                ("volumes made from it", j.volume_count.to_string()),
                ("description", fmt::dash(&t.description)),
                ("labels", fmt::labels(&t.labels)),
            ],
        )
        .map_err(out_err)?;
    }
    close(store)
}

fn delete(ctx: &Ctx, template: &str) -> CliResult {
    let store = ctx.open_store()?;
    let found = find_template(&store, template);
    let existed = match &found {
        Some(t) => store.delete_template(t.id).ctx(format_args!("deleting template {:?} ({})", t.name, t.id))?.existed,
        None => false,
    };
    if ctx.json {
        #[derive(Serialize)]
        struct Out {
            template_id: Option<String>,
            existed: bool,
        }
        ctx.print_json(&Out { template_id: found.as_ref().map(|t| t.id.to_string()), existed })?;
    } else {
        match (&found, existed) {
            (Some(t), true) => {
                ctx.say(format_args!("deleted template {} ({}); volumes made from it keep their data", t.name, t.id))?
            }
            _ => ctx.say(format_args!("template {template:?} is already gone; nothing to do"))?,
        }
    }
    close(store)
}
