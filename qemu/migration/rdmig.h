/*
 * The rdmig: migration transport: rdmig moves guest RAM (precopy rounds,
 * postcopy pulls, recovery), QEMU keeps the devices.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef QEMU_MIGRATION_RDMIG_H
#define QEMU_MIGRATION_RDMIG_H

#include "qapi/qapi-types-migration.h"

struct MigrationState;

/* "migrate rdmig:HOST:PORT[,options]", or with resume: true, recovery. */
void rdmig_start_outgoing_migration(struct MigrationState *s, const char *uri,
                                    bool resume, Error **errp);
/* "-incoming rdmig:..." / migrate-incoming, and migrate-recover. */
void rdmig_start_incoming_migration(const char *uri, Error **errp);

/* QMP commands on an rdmig migration; each returns false when no rdmig
 * migration is current, so QEMU's own handling goes on. */
bool rdmig_migration_cancel(void);
bool rdmig_migration_pause(Error **errp);
bool rdmig_migration_start_postcopy(Error **errp);
/* A new "migrate" of any kind: forget the last rdmig outgoing migration. */
void rdmig_outgoing_release(void);
/* query-migrate: rdmig's statistics under QEMU's names. */
void rdmig_migration_fill_info(MigrationInfo *info);

#endif
