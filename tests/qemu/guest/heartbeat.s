# SPDX-License-Identifier: MIT
#
# The QEMU tests' guest: a multiboot kernel (qemu -kernel) that needs no
# disk, no firmware beyond SeaBIOS and no OS, and runs in well under a
# second under TCG.  It owns REGION bytes from 2 MiB up and loops forever:
#
#   pass 0 writes every page; pass p >= 1 first checks every page, then
#   (DIRTY=1) rewrites one page in STRIDE, those with index % STRIDE ==
#   p % STRIDE.  A page holds, in its first and last word,
#     address ^ (q * 0x9E3779B1) ^ 0x5A5AA5A5
#   where q is the last pass that wrote it, which the guest computes from
#   the pass number alone: a page that missed a write (a lost dirty bit,
#   a page that did not arrive) or holds another page's data fails.
#
#   After each pass it prints on COM1 "B" (every page as expected) or "E"
#   (some page was not), then waits about PACE TSC ticks.  So the dirty
#   rate is REGION / STRIDE per pass, and the heartbeat shows whether the
#   guest runs and whether its memory is right, on either side of a
#   migration.
#
# Assembled with --defsym DIRTY=0|1 --defsym STRIDE=2^n --defsym
# REGION=bytes --defsym PACE=ticks, linked with ld -N at 1 MiB
# (tests/qemu/meson.build).
	.set MB_MAGIC, 0x1BADB002
	.set MB_FLAGS, 0
	.set START, 0x200000
	.set END, START + REGION
	.set K, 0x9E3779B1
	.set MAGIC, 0x5A5AA5A5
	.set COM1, 0x3f8

	.text
	.code32
	.globl _start
	# the multiboot header: within the first 8 KiB of the file
	.align 4
	.long MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)
_start:
	cli
	mov	$0x90000, %esp

	# pass 0: every page gets q = 0
	mov	$START, %esi
fill:	mov	%esi, %eax
	xor	$MAGIC, %eax
	mov	%eax, (%esi)
	mov	%eax, 4092(%esi)
	add	$4096, %esi
	cmp	$END, %esi
	jb	fill
	mov	$1, %ebp		# pass

pass:	mov	$START, %esi
	xor	%edi, %edi		# page index
	xor	%ebx, %ebx		# bad pages seen this pass
page:
.if DIRTY
	# q = (p-1) - ((p-1-i) mod STRIDE), or 0 before the first rewrite
	lea	-1(%ebp), %eax
	mov	%eax, %ecx
	sub	%edi, %ecx
	and	$(STRIDE - 1), %ecx
	sub	%ecx, %eax
	jns	1f
	xor	%eax, %eax
1:	imul	$K, %eax, %eax
.else
	xor	%eax, %eax
.endif
	xor	%esi, %eax
	xor	$MAGIC, %eax
	cmp	%eax, (%esi)
	jne	bad
	cmp	%eax, 4092(%esi)
	jne	bad
checked:
.if DIRTY
	mov	%edi, %ecx
	xor	%ebp, %ecx
	test	$(STRIDE - 1), %ecx
	jnz	next
	mov	%ebp, %eax
	imul	$K, %eax, %eax
	xor	%esi, %eax
	xor	$MAGIC, %eax
	mov	%eax, (%esi)
	mov	%eax, 4092(%esi)
.endif
next:	add	$4096, %esi
	inc	%edi
	cmp	$END, %esi
	jb	page

	mov	$COM1, %dx
	mov	$'B', %al
	test	%ebx, %ebx
	jz	2f
	mov	$'E', %al
2:	out	%al, %dx
	inc	%ebp

	# pace: the low TSC word may jump across a migration; any jump ends
	# the wait rather than stretching it
	rdtsc
	mov	%eax, %ecx
3:	rdtsc
	sub	%ecx, %eax
	cmp	$PACE, %eax
	jb	3b
	jmp	pass

bad:	inc	%ebx
	jmp	checked
